//! The crate's one error type.

use std::sync::Arc;

/// Everything that can go wrong while loading, verifying, compiling, testing or evaluating a
/// policy set.
///
/// Messages name the file, rule or limit that failed; they never contain key material or
/// request data.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// Reading a policy file or directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that could not be read.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The bundle archive is not a valid gzip-compressed tar file.
    #[error("bundle archive is malformed: {0}")]
    Archive(String),
    /// The bundle exceeds one of the configured [`BundleLimits`](crate::BundleLimits).
    #[error("bundle limit exceeded: {0}")]
    Limit(String),
    /// A bundle entry has a path or type that is never accepted (path traversal, absolute
    /// path, symlink, hard link, device, ...).
    #[error("bundle entry {path:?} refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as found in the archive or directory.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The `.manifest` is invalid, or a package or data path lies outside its `roots`.
    #[error("bundle manifest: {0}")]
    Manifest(String),
    /// A `data.json` / `data.yaml` file could not be parsed or merged.
    #[error("data file {path}: {detail}")]
    Data {
        /// The data file's path inside the bundle.
        path: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Bundle signature verification failed (missing or invalid `.signatures.json`, bad JWT,
    /// a file missing from or not listed in the signature, or a digest mismatch).
    #[error("bundle signature: {0}")]
    Signature(String),
    /// A Rego module failed to parse.
    #[error("rego module {path}: {detail}")]
    Parse {
        /// The module's path inside the bundle.
        path: String,
        /// The parser's message (with the offending line).
        detail: String,
    },
    /// The policy set could not be compiled for the configured decision rule.
    #[error("cannot compile {rule}: {detail}")]
    Compile {
        /// The decision rule being compiled.
        rule: String,
        /// The compiler's message.
        detail: String,
    },
    /// The policy set's own `test_*` rules did not all pass, so the set was refused.
    #[error("policy tests failed ({failed} of {total}): {}", first_names(.names))]
    TestsFailed {
        /// How many tests failed or raised an error.
        failed: usize,
        /// How many tests ran.
        total: usize,
        /// Names of the failing tests (`data.pkg.test_x`).
        names: Vec<String>,
    },
    /// Evaluating a query or rule failed.
    #[error("evaluation of {query} failed: {detail}")]
    Eval {
        /// The query or rule path.
        query: String,
        /// The evaluator's message.
        detail: String,
    },
    /// An input document was not valid JSON or not an object.
    #[error("policy input: {0}")]
    Input(String),
    /// A configuration value was rejected (e.g. a malformed decision rule path or key).
    #[error("invalid policy configuration: {0}")]
    Config(String),
    /// The set has a statement that regorus and OPA evaluate differently (a negated call or
    /// operator, or membership used as a value, with an operand that may be undefined), so it
    /// is refused rather than decide otherwise than OPA would. The message names the module,
    /// line and rule and how to write the statement so both agree; see
    /// [`PolicyOptions::allow_regorus_semantics`](crate::PolicyOptions::allow_regorus_semantics).
    #[error("not decided as OPA decides: {0}")]
    OpaDivergence(String),
    /// A bundle server or log service could not be reached, answered with an error status,
    /// or sent more than allowed (feature `remote`).
    #[error("service {url}: {reason}")]
    Remote {
        /// The URL that was requested (never carries credentials).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Watching the bundle failed outside of reading it as a bundle (a background thread
    /// could not start, a path could not be read).
    #[error("policy watch: {0}")]
    Watch(zt_rotate::Error),
}

fn first_names(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", and {} more", names.len() - SHOWN));
    }
    s
}

impl PolicyError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            source: Arc::new(source),
        }
    }
}

/// Short for `Result<T, PolicyError>`.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;
