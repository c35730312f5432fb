//! The outcome of one policy decision, and how a rule's value becomes one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use regorus::Value;
use serde::{Deserialize, Serialize};

/// One authorization decision.
///
/// Attach it to the request so handlers can see why they were allowed in; log
/// `decision_id` to find the matching decision-log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyDecision {
    /// Whether the request may proceed.
    pub allow: bool,
    /// Why (from the policy's `reasons`, or a reason this crate adds when it denies: the rule
    /// was undefined, evaluation failed, the time budget ran out, ...).
    pub reasons: Vec<String>,
    /// The revision of the policy set that decided.
    pub revision: String,
    /// A unique id for this decision (UUID format), shared with the decision log.
    pub decision_id: String,
    /// Evaluation time in nanoseconds.
    pub eval_ns: u64,
    /// Headers the policy asks to add (from the decision object's `headers`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl PolicyDecision {
    /// A denial that did not come from evaluating a policy (for callers that cannot even
    /// build an input, for example). It carries a fresh decision id and no revision.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![reason.into()],
            revision: String::new(),
            decision_id: new_decision_id(),
            eval_ns: 0,
            headers: BTreeMap::new(),
        }
    }
}

/// What a rule's value means, before the revision, id and timing are attached.
pub(crate) struct Verdict {
    pub(crate) allow: bool,
    pub(crate) reasons: Vec<String>,
    pub(crate) headers: BTreeMap<String, String>,
}

impl Verdict {
    pub(crate) fn deny(reason: String) -> Self {
        Self {
            allow: false,
            reasons: vec![reason],
            headers: BTreeMap::new(),
        }
    }
}

/// Interprets the decision rule's value:
///
/// - `true` allows; `false` denies;
/// - an object allows only when its `allow` (or OPA-Envoy's `allowed`) field is `true`; its
///   `reasons` (array or set of strings) or `reason` (string) and `headers` (object of strings
///   or arrays of strings) are carried over;
/// - undefined and anything else deny, with a reason saying so.
pub(crate) fn interpret(rule: &str, value: &Value) -> Verdict {
    match value {
        Value::Bool(true) => Verdict {
            allow: true,
            reasons: Vec::new(),
            headers: BTreeMap::new(),
        },
        Value::Bool(false) => Verdict::deny(format!("denied by {rule}")),
        Value::Undefined => Verdict::deny(format!("{rule} is undefined")),
        Value::Object(obj) => {
            let get = |k: &str| obj.get(&Value::from(k));
            let allow = match get("allow").or_else(|| get("allowed")) {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            };
            let mut reasons = Vec::new();
            match get("reasons") {
                Some(Value::Array(a)) => reasons.extend(a.iter().map(text)),
                Some(Value::Set(s)) => reasons.extend(s.iter().map(text)),
                Some(Value::String(s)) => reasons.push(s.to_string()),
                _ => {}
            }
            if let Some(Value::String(s)) = get("reason") {
                reasons.push(s.to_string());
            }
            let mut headers = BTreeMap::new();
            if let Some(Value::Object(h)) = get("headers") {
                for (k, v) in h.iter() {
                    let v = match v {
                        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
                        v => text(v),
                    };
                    headers.insert(text(k), v);
                }
            }
            match allow {
                Some(true) => Verdict {
                    allow: true,
                    reasons,
                    headers,
                },
                Some(false) => {
                    if reasons.is_empty() {
                        reasons.push(format!("denied by {rule}"));
                    }
                    Verdict {
                        allow: false,
                        reasons,
                        headers,
                    }
                }
                None => {
                    reasons.push(format!("{rule} has no boolean allow field"));
                    Verdict {
                        allow: false,
                        reasons,
                        headers,
                    }
                }
            }
        }
        other => Verdict::deny(format!(
            "{rule} is a {}, not a boolean or an object",
            type_name(other)
        )),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        v => v.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined value",
    }
}

/// Turns an evaluator error into a short reason (no source excerpt, no input data).
pub(crate) fn error_reason(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if lower.contains("time limit") {
        return "policy evaluation exceeded its time budget".into();
    }
    if lower.contains("instruction limit") {
        return "policy evaluation exceeded its instruction budget".into();
    }
    // regorus errors look like "\n--> file:3:7\n  |\n3 | ...\n  |   ^\nerror: divide by zero".
    let location = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .map(str::trim);
    let what = message
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| {
            message
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error")
        });
    let what: String = what.chars().take(200).collect();
    match location {
        Some(loc) => format!("policy evaluation failed at {loc}: {what}"),
        None => format!("policy evaluation failed: {what}"),
    }
}

/// A random-looking, unique id in UUID (version 4) form: 64 random bits fixed per process,
/// then a per-process counter added to 64 more random bits.
pub(crate) fn new_decision_id() -> String {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (hi, lo) = *SEED.get_or_init(|| {
        let mut b = [0u8; 16];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        if aws_lc_rs::rand::SecureRandom::fill(&rng, &mut b).is_err() {
            // Fall back to the time: ids stay unique within the process via the counter.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            b = t.to_le_bytes();
        }
        let (h, l) = b.split_at(8);
        (
            u64::from_le_bytes(h.try_into().unwrap_or_default()),
            u64::from_le_bytes(l.try_into().unwrap_or_default()),
        )
    });
    // Each thread takes a block of 2^32 ids from the shared counter once, then counts
    // locally: no shared cache line is written per decision.
    thread_local! {
        static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    let n = NEXT.with(|next| {
        let (mut base, mut used) = next.get();
        if used == 0 || used == 1 << 32 {
            base = COUNTER.fetch_add(1 << 32, Ordering::Relaxed);
            used = 0;
        }
        next.set((base, used + 1));
        base + used
    });
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo.wrapping_add(n) & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut s = String::with_capacity(36);
    let _ = write!(
        s,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_unique_uuids() {
        let a = new_decision_id();
        let b = new_decision_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn object_results_are_interpreted() {
        let v = Value::from_json_str(
            r#"{"allowed": true, "reasons": ["r1"], "headers": {"x-a": "1", "x-b": ["2", "3"]}}"#,
        )
        .unwrap();
        let d = interpret("data.x.d", &v);
        assert!(d.allow);
        assert_eq!(d.reasons, vec!["r1"]);
        assert_eq!(d.headers["x-b"], "2, 3");

        let v = Value::from_json_str(r#"{"allow": "yes"}"#).unwrap();
        assert!(!interpret("data.x.d", &v).allow);
        let v = Value::from_json_str(r#"{"allow": false, "reason": "nope"}"#).unwrap();
        let d = interpret("data.x.d", &v);
        assert!(!d.allow);
        assert_eq!(d.reasons, vec!["nope"]);
        assert!(!interpret("data.x.d", &Value::from(1u64)).allow);
        assert!(!interpret("data.x.d", &Value::Undefined).allow);
    }

    #[test]
    fn error_reasons_are_short() {
        let msg =
            "\n--> p.rego:2:19\n  |\n2 | allow if { x := 1 / 0 }\n  |     ^\nerror: divide by zero";
        assert_eq!(
            error_reason(msg),
            "policy evaluation failed at p.rego:2:19: divide by zero"
        );
        assert_eq!(
            error_reason("Execution exceeded time limit (elapsed=1ms, limit=1ms, pc=3)"),
            "policy evaluation exceeded its time budget"
        );
    }
}
