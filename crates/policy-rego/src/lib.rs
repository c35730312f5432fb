//! OPA-compatible Rego authorization on [regorus]: bundles, signatures, hot reload,
//! OPA-Envoy-style input and OPA-format decision logs.
//!
//! ```
//! use policy_rego::{BundleLoader, BundleWriter, InputBuilder, InputOptions, Manifest,
//!                   PolicyOptions, PolicySet};
//!
//! let mut manifest = Manifest::default();
//! manifest.revision = "2026-11-25.1".into();
//! let archive = BundleWriter::new()
//!     .manifest(&manifest)
//!     .file("http/authz/policy.rego", r#"
//!         package http.authz
//!
//!         default allow := false
//!
//!         allow if {
//!             input.attributes.request.http.method == "GET"
//!             input.parsed_path[0] == "public"
//!         }
//!
//!         allow if "admin" in data.http.authz.roles[input.attributes.source.principal]
//!     "#)
//!     .file("http/authz/policy_test.rego", r#"
//!         package http.authz
//!
//!         test_public_get if allow with input as {
//!             "attributes": {"request": {"http": {"method": "GET"}}},
//!             "parsed_path": ["public", "x"],
//!         }
//!     "#)
//!     .file("http/authz/data.json", r#"{"roles": {"spiffe://example.org/admin": ["admin"]}}"#)
//!     .to_tar_gz()?;
//!
//! let bundle = BundleLoader::new().load_tar_gz("example", &archive)?;
//! // Compiles the rule, runs `test_public_get`, and is then ready to decide.
//! let policy = PolicySet::compile(bundle, &PolicyOptions::new())?;
//!
//! let req = http::Request::delete("/orders/7").body(()).unwrap();
//! let (parts, ()) = req.into_parts();
//! let input = InputBuilder::from_parts(&parts)
//!     .principal("spiffe://example.org/admin")
//!     .build(&InputOptions::default());
//! let decision = policy.decide(&input);
//! assert!(decision.allow);
//! assert_eq!(decision.revision, "2026-11-25.1");
//!
//! let input = InputBuilder::from_parts(&parts)
//!     .principal("spiffe://example.org/web")
//!     .build(&InputOptions::default());
//! let decision = policy.decide(&input);
//! assert!(!decision.allow);
//! assert_eq!(decision.reasons, ["denied by data.http.authz.allow"]);
//! # Ok::<(), policy_rego::PolicyError>(())
//! ```
//!
//! # Pieces
//!
//! - [`BundleLoader`] reads OPA bundles (`.tar.gz` or a directory) within [`BundleLimits`]
//!   and checks `.signatures.json` with a [`SignatureVerifier`]; [`BundleWriter`] and
//!   [`BundleSigner`] build and sign them.
//! - [`PolicySet`] is one compiled, tested, immutable set: [`decide`](PolicySet::decide),
//!   [`eval_query`](PolicySet::eval_query) (`opa eval`), [`run_tests`](PolicySet::run_tests)
//!   (`opa test`).
//! - [`PolicyEngine`] holds the set in force and swaps it atomically on reload;
//!   [`PolicyWatcher`] reloads it when the bundle on disk changes; decisions can be logged in
//!   OPA's decision-log format through a [`DecisionLogSink`].
//! - With the `remote` feature, `BundleDownloader` polls a bundle server (ETags, long
//!   polling, signed bundles) into an engine and `LogUploader` ships decision logs (and
//!   zt-audit lines) to a log service, as OPA does both; see `docs/fleet.md`.
//! - [`InputBuilder`] turns an `http` request plus peer identity and token claims into the
//!   OPA-Envoy-style input document.
//!
//! Decisions run on regorus's compiled bytecode (RVM) when the decision rule compiles to it,
//! else on its interpreter, with one prepared evaluator per thread: no compilation per
//! request. See `docs/policy.md` for the input document, porting from OPA-Envoy and what
//! regorus does not support.

mod bundle;
mod decision;
mod engine;
mod error;
mod input;
mod log;
mod policy;
#[cfg(feature = "remote")]
mod remote;
mod test_report;
mod watch;

pub use bundle::{
    Bundle, BundleLimits, BundleLoader, BundleSigner, BundleWriter, MANIFEST_FILE, Manifest,
    SIGNATURES_FILE, SignatureVerifier,
};
pub use decision::PolicyDecision;
pub use engine::{PolicyEngine, PolicyEngineBuilder, ReloadStats};
pub use error::{PolicyError, Result};
pub use input::{InputBuilder, InputDocument, InputOptions, PolicyInput};
pub use log::{BundleRevision, DecisionLogConfig, DecisionLogRecord, DecisionLogSink};
pub use policy::{Evaluator, PolicyOptions, PolicySet};
#[cfg(feature = "remote")]
pub use remote::{
    BundleDownloader, BundleDownloaderBuilder, BundleStatus, DownloadOutcome,
    LONG_POLLING_MEDIA_TYPE, LogUploader, LogUploaderBuilder, Service, ServiceBuilder, UploadError,
    UploadStatus,
};
pub use test_report::{TestOutcome, TestReport, TestResult};
pub use watch::{PolicyWatcher, WatchEvent, WatchHandle};
pub use zt_rotate::{MaterialHolder, RotationStatus};
