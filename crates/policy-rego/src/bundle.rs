//! Loading policy bundles: OPA `.tar.gz` bundles and plain directories.
//!
//! Both use OPA's bundle layout:
//!
//! - `*.rego` — Rego modules (v1 syntax unless the manifest says `"rego_version": 0`);
//! - `data.json` / `data.yaml` / `data.yml` at any depth — data documents mounted at the
//!   directory's path (`roles/bindings/data.json` → `data.roles.bindings`);
//! - `.manifest` — optional `{"revision": "...", "roots": ["..."], "metadata": {...}}`;
//! - `.signatures.json` — optional signature, required when a [`SignatureVerifier`] is
//!   configured.
//!
//! Other files are ignored (but covered by the signature when one is checked). Untrusted
//! archives are bounded by [`BundleLimits`], and entries that are links, devices or paths with
//! `..` are refused outright.

//!
//! The parts: [`limits`] (what reading may cost), [`read`] (archive and directory reading),
//! [`loader`] (signature, manifest, modules, data), [`roots`] (manifest roots), [`merge`]
//! (data documents merged into one tree), [`signature`], [`canonical`] and [`writer`].

pub(crate) mod canonical;
mod limits;
mod loader;
mod merge;
pub(crate) mod read;
pub(crate) mod roots;
mod signature;
mod writer;

use regorus::Value;
use serde::{Deserialize, Serialize};

pub use limits::BundleLimits;
pub use loader::BundleLoader;
pub(crate) use roots::{manifest_roots_of, under_roots};
pub use signature::{SIGNATURES_FILE, SignatureVerifier};
pub use writer::{BundleSigner, BundleWriter};

/// The name of the manifest file inside a bundle.
pub const MANIFEST_FILE: &str = ".manifest";

/// The parsed `.manifest` of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct Manifest {
    /// The bundle's revision (empty when absent).
    #[serde(default)]
    pub revision: String,
    /// The data and package paths this bundle owns, slash-separated (`["http/authz"]`); `None`
    /// means the whole `data` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The Rego language version of the modules: `1` (default) or `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego_version: Option<u8>,
}

/// A loaded (and, when configured, signature-verified) bundle: modules, data and manifest.
/// Compile it into a [`PolicySet`](crate::PolicySet).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub(crate) name: String,
    pub(crate) manifest: Manifest,
    pub(crate) modules: Vec<(String, String)>,
    pub(crate) data: Value,
    pub(crate) signed: bool,
}

impl Bundle {
    /// Where the bundle came from (its path, or the name given to
    /// [`BundleLoader::load_tar_gz`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle's manifest (defaults when it has none).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The revision from the manifest (empty when none).
    pub fn revision(&self) -> &str {
        &self.manifest.revision
    }

    /// The Rego modules as `(path, source)`, sorted by path.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.modules.iter().map(|(p, s)| (p.as_str(), s.as_str()))
    }

    /// The merged data document as JSON.
    pub fn data_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.data).unwrap_or(serde_json::Value::Null)
    }

    /// Whether a signature was verified for this bundle.
    pub fn is_signed(&self) -> bool {
        self.signed
    }
}

/// Reads a YAML data document (UTF-8) as JSON, within serde-saphyr's default budgets (alias
/// replay, depth, events), so a hostile document fails instead of expanding without bound.
pub(crate) fn yaml_document(bytes: &[u8]) -> std::result::Result<serde_json::Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_owned())?;
    serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_read_as_json_and_bombs_are_refused() {
        assert_eq!(
            yaml_document(b"a: [1, two, {b: true}]\nc: ~\n").unwrap(),
            serde_json::json!({"a": [1, "two", {"b": true}], "c": null})
        );
        assert!(yaml_document(b"a: [").is_err());
        assert!(yaml_document(&[0xff]).is_err());
        // A billion laughs: nine levels of nine aliases.
        let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        assert!(yaml_document(bomb.as_bytes()).is_err());
    }

    #[test]
    fn a_manifest_takes_defaults_for_what_it_omits() {
        let m: Manifest = serde_json::from_str(r#"{"revision": "r1"}"#).unwrap();
        assert_eq!(m.revision, "r1");
        assert_eq!((m.roots, m.metadata, m.rego_version), (None, None, None));
        let empty: Manifest = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Manifest::default());
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"revision":""}"#);
    }

    #[test]
    fn a_bundle_shows_what_it_holds() {
        let bundle = Bundle {
            name: "b".into(),
            manifest: Manifest {
                revision: "r".into(),
                ..Manifest::default()
            },
            modules: vec![("a.rego".into(), "package a".into())],
            data: Value::from_json_str(r#"{"x": 1}"#).unwrap(),
            signed: false,
        };
        assert_eq!((bundle.name(), bundle.revision()), ("b", "r"));
        assert_eq!(
            bundle.modules().collect::<Vec<_>>(),
            [("a.rego", "package a")]
        );
        assert_eq!(bundle.data_json(), serde_json::json!({"x": 1}));
        assert!(!bundle.is_signed());
    }
}
