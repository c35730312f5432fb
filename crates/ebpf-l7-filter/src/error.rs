//! The crate's one error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong while loading a rule file (and, with the kernel loader,
/// while loading and attaching the filter).
///
/// Rule-file errors name the rule (its `id`, or its position when the id itself is the
/// problem) and the field that failed; they never echo more than the offending value.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    /// Reading the rule file failed.
    #[error("cannot read rule file {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The rule file is not valid YAML, or does not have the rule file's shape (a missing or
    /// unknown key, a wrong type, an action other than allow/deny/audit).
    #[error("rule file is malformed: {0}")]
    Syntax(String),
    /// A rule's `id` is empty, longer than [`MAX_RULE_ID`](crate::MAX_RULE_ID) bytes, or
    /// has a byte outside `A-Z a-z 0-9 . _ -`.
    #[error("rule #{position} has an invalid id {id:?}: {reason}")]
    InvalidId {
        /// The rule's 1-based position in the file.
        position: usize,
        /// The id as written (at most the first 80 bytes).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two rules have the same `id`.
    #[error("rule id {id:?} is used twice (rules #{first} and #{second})")]
    DuplicateId {
        /// The id.
        id: String,
        /// 1-based position of the first rule with it.
        first: usize,
        /// 1-based position of the second.
        second: usize,
    },
    /// A rule's path is not one a request could canonically carry (no leading `/`, `//`,
    /// dot segments, percent-encoded unreserved characters, bytes outside 0x21..=0x7e, …).
    #[error("rule {id:?}: path {path:?} is not a canonical path: {reason}")]
    InvalidPath {
        /// The rule's id.
        id: String,
        /// The path as written (at most the first 200 bytes).
        path: String,
        /// Which check failed.
        reason: &'static str,
    },
    /// A rule's path is longer than [`MAX_PATH`](crate::MAX_PATH) bytes, so the kernel could
    /// never see it.
    #[error("rule {id:?}: path is {len} bytes, longer than the limit of {max}")]
    PathTooLong {
        /// The rule's id.
        id: String,
        /// The path's length in bytes.
        len: usize,
        /// The limit ([`MAX_PATH`](crate::MAX_PATH)).
        max: usize,
    },
    /// A rule's `methods` names something other than the nine known methods (upper case).
    #[error(
        "rule {id:?}: unknown method {method:?} (known: GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH)"
    )]
    UnknownMethod {
        /// The rule's id.
        id: String,
        /// The method as written (at most the first 32 bytes).
        method: String,
    },
    /// A rule has `methods: []`, which would never match; leave `methods` out for "any".
    #[error("rule {id:?}: `methods` is empty (leave it out to match any method)")]
    EmptyMethods {
        /// The rule's id.
        id: String,
    },
    /// Two rules could match the same request with the same priority (same kind, same path,
    /// and both without `methods` or with a method in common), so neither would be the
    /// winner.
    #[error("rules {first:?} and {second:?} tie completely (same {kind} path {path:?}{methods})")]
    Tie {
        /// The earlier rule's id.
        first: String,
        /// The later rule's id.
        second: String,
        /// `exact` or `prefix`.
        kind: &'static str,
        /// The shared path.
        path: String,
        /// `", any method"` or `", method GET"`: where they overlap.
        methods: String,
    },
    /// The file has more rules than the kernel's maps hold.
    #[error("rule file has {count} rules, more than the limit of {max}")]
    TooManyRules {
        /// The number of rules in the file.
        count: usize,
        /// The limit ([`MAX_RULES`](crate::MAX_RULES)).
        max: usize,
    },
    /// Watching a rule file failed (a file over the size limit, the thread could not start).
    #[error("watching the rule file: {0}")]
    Watch(zt_rotate::Error),
    /// The process may not load eBPF programs or attach them (needs root, or `CAP_BPF`
    /// and `CAP_NET_ADMIN`).
    #[error(
        "not permitted to load or attach the eBPF filter (run as root, or with CAP_BPF and CAP_NET_ADMIN): {0}"
    )]
    PermissionDenied(String),
    /// The interface to attach to does not exist in this network namespace.
    #[error("no network interface named {0:?} in this network namespace")]
    InterfaceNotFound(String),
    /// The kernel lacks something the filter needs (bpffs, TCX, a map type, BTF).
    #[error("the kernel lacks a feature the eBPF filter needs: {0}")]
    KernelFeature(String),
    /// The kernel refused an operation (the verifier's log is included for a refused load).
    #[error("eBPF filter: {0}")]
    Kernel(String),
}
