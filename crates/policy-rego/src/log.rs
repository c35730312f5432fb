//! Decision logs in OPA's format.
//!
//! Each decision made through a [`PolicyEngine`](crate::PolicyEngine) with a sink configured
//! produces one [`DecisionLogRecord`], shaped like the events OPA's decision-log plugin
//! uploads:
//!
//! ```json
//! {"decision_id": "…", "labels": {"app": "…"}, "path": "http/authz/allow",
//!  "input": {…}, "result": true, "bundles": {"/etc/policy": {"revision": "42"}},
//!  "revision": "42", "requested_by": "10.0.0.7:51234",
//!  "timestamp": "2026-11-25T10:00:00.123456789Z",
//!  "metrics": {"timer_rego_query_eval_ns": 10450}, "erased": ["/input/…"]}
//! ```
//!
//! Fields named by [`DecisionLogConfig::erase`] are removed and listed in `erased`; fields
//! named by [`DecisionLogConfig::mask`] are replaced and listed in `masked` (OPA's
//! `system.log.mask` results, configured statically).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The revision of one bundle, as OPA logs it under `bundles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRevision {
    /// The bundle's revision.
    pub revision: String,
}

/// One decision-log event (see the module docs for the JSON form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DecisionLogRecord {
    /// The decision's id (same as [`PolicyDecision::decision_id`](crate::PolicyDecision)).
    pub decision_id: String,
    /// Static labels configured for this engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The decision rule, slash-separated without `data` (`http/authz/allow`).
    pub path: String,
    /// The input, after erasing and masking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The decision rule's value (absent when it was undefined or evaluation failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why evaluation failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The bundle in force, by name.
    #[serde(default)]
    pub bundles: BTreeMap<String, BundleRevision>,
    /// The revision in force (OPA's older top-level field).
    pub revision: String,
    /// The peer address from the input, `ip:port`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// When the decision was made, RFC 3339 in UTC.
    pub timestamp: String,
    /// `timer_rego_query_eval_ns`: evaluation time.
    #[serde(default)]
    pub metrics: BTreeMap<String, u64>,
    /// JSON pointers that were erased.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
    /// JSON pointers that were masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
}

/// Where decision-log records go. Implemented for any `Fn(DecisionLogRecord)`.
///
/// Called on the request path, after the decision: implementations should hand the record
/// off quickly (a channel, a buffered writer).
pub trait DecisionLogSink: Send + Sync + 'static {
    /// Takes one record.
    fn log(&self, record: DecisionLogRecord);
}

impl<F> DecisionLogSink for F
where
    F: Fn(DecisionLogRecord) + Send + Sync + 'static,
{
    fn log(&self, record: DecisionLogRecord) {
        self(record);
    }
}

/// A sink plus what to strip from records before they reach it.
#[derive(Clone)]
pub struct DecisionLogConfig {
    pub(crate) sink: Arc<dyn DecisionLogSink>,
    pub(crate) erase: Vec<String>,
    pub(crate) mask: Vec<(String, serde_json::Value)>,
    pub(crate) labels: BTreeMap<String, String>,
}

impl fmt::Debug for DecisionLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionLogConfig")
            .field("erase", &self.erase)
            .field(
                "mask",
                &self.mask.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl DecisionLogConfig {
    /// Records go to `sink`.
    pub fn new(sink: impl DecisionLogSink) -> Self {
        Self {
            sink: Arc::new(sink),
            erase: Vec::new(),
            mask: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Removes the field at a JSON pointer rooted at the record (`/input/...` or
    /// `/result/...`), as OPA's mask rule does with a plain path.
    #[must_use]
    pub fn erase(mut self, pointer: impl Into<String>) -> Self {
        self.erase.push(pointer.into());
        self
    }

    /// Replaces the field at a JSON pointer with `value` when present (OPA's `upsert` mask
    /// operation, applied to existing fields only).
    #[must_use]
    pub fn mask(mut self, pointer: impl Into<String>, value: serde_json::Value) -> Self {
        self.mask.push((pointer.into(), value));
        self
    }

    /// Adds a static label to every record.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Applies the erase and mask lists to a record.
    pub(crate) fn redact(&self, record: &mut DecisionLogRecord) {
        for p in &self.erase {
            if let Some(target) = target_of(record, p)
                && remove_pointer(target.0, target.1)
            {
                record.erased.push(p.clone());
            }
        }
        for (p, v) in &self.mask {
            if let Some(target) = target_of(record, p)
                && let Some(slot) = target.0.and_then(|doc| pointer_mut(doc, target.1))
            {
                *slot = v.clone();
                record.masked.push(p.clone());
            }
        }
    }
}

type Target<'a, 'p> = (Option<&'a mut serde_json::Value>, &'p str);

fn target_of<'a, 'p>(
    record: &'a mut DecisionLogRecord,
    pointer: &'p str,
) -> Option<Target<'a, 'p>> {
    if let Some(rest) = pointer.strip_prefix("/input") {
        Some((record.input.as_mut(), rest))
    } else {
        pointer
            .strip_prefix("/result")
            .map(|rest| (record.result.as_mut(), rest))
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_mut<'a>(
    doc: &'a mut serde_json::Value,
    pointer: &str,
) -> Option<&'a mut serde_json::Value> {
    if pointer.is_empty() {
        return Some(doc);
    }
    let rest = pointer.strip_prefix('/')?;
    let mut cur = doc;
    for token in rest.split('/') {
        let token = unescape(token);
        cur = match cur {
            serde_json::Value::Object(o) => o.get_mut(&token)?,
            serde_json::Value::Array(a) => a.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_pointer(doc: Option<&mut serde_json::Value>, pointer: &str) -> bool {
    let Some(doc) = doc else { return false };
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let last = unescape(last);
    match pointer_mut(doc, parent) {
        Some(serde_json::Value::Object(o)) => o.remove(&last).is_some(),
        Some(serde_json::Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// `ip:port` from an input's `attributes.source.address.socketAddress`.
pub(crate) fn requested_by(input: &serde_json::Value) -> Option<String> {
    let sa = input.pointer("/attributes/source/address/socketAddress")?;
    let ip = sa.get("address")?.as_str()?;
    let port = sa.get("portValue")?.as_u64()?;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DecisionLogRecord {
        DecisionLogRecord {
            decision_id: "id".into(),
            labels: BTreeMap::new(),
            path: "a/b".into(),
            input: Some(
                serde_json::json!({"user": {"password": "p", "name": "n"}, "list": [1, 2]}),
            ),
            result: Some(serde_json::json!({"allow": true, "secret": "s"})),
            error: None,
            bundles: BTreeMap::new(),
            revision: "1".into(),
            requested_by: None,
            timestamp: String::new(),
            metrics: BTreeMap::new(),
            erased: Vec::new(),
            masked: Vec::new(),
        }
    }

    #[test]
    fn erase_and_mask_follow_pointers() {
        let cfg = DecisionLogConfig::new(|_r: DecisionLogRecord| {})
            .erase("/input/user/password")
            .erase("/input/list/0")
            .erase("/input/absent")
            .mask("/result/secret", serde_json::json!("***"));
        let mut r = record();
        cfg.redact(&mut r);
        assert_eq!(
            r.input,
            Some(serde_json::json!({"user": {"name": "n"}, "list": [2]}))
        );
        assert_eq!(
            r.result,
            Some(serde_json::json!({"allow": true, "secret": "***"}))
        );
        assert_eq!(r.erased, vec!["/input/user/password", "/input/list/0"]);
        assert_eq!(r.masked, vec!["/result/secret"]);
    }

    #[test]
    fn requested_by_formats_ipv6() {
        let i = serde_json::json!({"attributes": {"source": {"address": {"socketAddress": {"address": "::1", "portValue": 8}}}}});
        assert_eq!(requested_by(&i).as_deref(), Some("[::1]:8"));
    }
}
