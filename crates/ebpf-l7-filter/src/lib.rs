//! HTTP method/path rules enforced at two points with one semantics: in the kernel (a tc
//! classifier, best effort, for cleartext HTTP/1.x) and in userspace (`zt-tower`'s
//! `L7RulesLayer`, the boundary, for everything the kernel cannot see: TLS, HTTP/2 and gRPC,
//! pipelined requests).
//!
//! This part of the crate needs no kernel and no aya:
//!
//! * [`rules`]: the YAML rule file, validated on load with errors that name the rule, and the
//!   validated [`RuleSet`];
//! * the userspace twin: [`RuleSet::classify_segment`] decides a TCP payload exactly as the
//!   kernel program does (used by the differential test against the kernel), and
//!   [`RuleSet::decide`] decides a parsed request for the in-process layer;
//! * [`holder`]: [`RulesHolder`], the rule set in force, rotated like other material with
//!   `zt-rotate` (a watched file, or your own source through [`MaterialHolder`]);
//! * `testing` (feature `testing`): the shared corpus of request lines with path tricks and
//!   generated rule sets.
//!
//! ```
//! use ebpf_l7_filter::{Reason, RuleSet, Verdict};
//!
//! let rules = RuleSet::from_yaml(r#"
//! default: deny
//! strict_paths: true
//! rules:
//!   - id: health
//!     action: allow
//!     methods: [GET]
//!     path: { exact: "/health" }
//!   - id: orders-read
//!     action: allow
//!     methods: [GET, HEAD]
//!     path: { prefix: "/api/orders" }
//!   - id: orders-write
//!     action: audit
//!     methods: [POST]
//!     path: { prefix: "/api/orders" }
//! "#)?;
//!
//! // The in-process decision (HTTP/1, HTTP/2, gRPC).
//! let d = rules.decide(&http::Method::GET, "/api/orders/7?expand=1");
//! assert_eq!((d.verdict(), d.reason()), (Verdict::Allow, Reason::Rule));
//! assert_eq!(rules.rules()[d.rule_index().unwrap()].id(), "orders-read");
//! assert_eq!(rules.decide(&http::Method::DELETE, "/api/orders/7").verdict(), Verdict::Deny);
//! assert_eq!(rules.decide(&http::Method::GET, "/api/orders-internal").verdict(), Verdict::Deny);
//!
//! // What the kernel decides for the same request in one TCP segment.
//! let c = rules.classify_segment(b"POST /api/orders HTTP/1.1\r\nHost: shop\r\n\r\n");
//! let d = c.decision().unwrap();
//! assert_eq!((d.verdict(), d.kernel_rule_id(), d.emits_event()), (Verdict::Audit, 3, true));
//! # Ok::<(), ebpf_l7_filter::FilterError>(())
//! ```
//!
//! The semantics (request start, path extraction, canonical-path checks, strict and
//! non-strict mode, matching, events) are written down in `docs/ebpf.md`; this crate's tests
//! check the matcher against a scan of all rules, and the twin against a literal reading of
//! that text, on generated inputs.

mod classify;
mod error;
pub mod holder;
#[cfg(feature = "kernel")]
pub mod kernel;
mod path;
pub mod rules;
#[cfg(feature = "testing")]
pub mod testing;
mod verdict;

pub use classify::{Classification, SegmentRequest};
pub use error::FilterError;
pub use holder::RulesHolder;
#[cfg(feature = "kernel")]
pub use kernel::{Counters, KernelEvent, KernelEvents, L7Filter, L7FilterBuilder, TestRunOutcome};
pub use rules::{MethodSet, PathMatch, Rule, RuleSet};
pub use verdict::{
    Decision, EVENT_PATH_MAX, FLOOR_ANY, MAX_METHOD, MAX_PATH, MAX_RULE_ID, MAX_RULES, Method,
    Reason, Verdict,
};
pub use zt_rotate::MaterialHolder;
