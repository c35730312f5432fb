//! What callers hand to the log: [`Record`] and [`TraceId`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::AuditError;
use crate::redact::Redactor;

/// Field names the log writes itself; a [`Record::field`] with one of these names is
/// refused with [`AuditError::ReservedField`].
pub const RESERVED_FIELDS: &[&str] = &[
    "seq",
    "ts",
    "trace_id",
    "kind",
    "subject",
    "action",
    "resource",
    "decision",
    "reason",
    "prev_hash",
    "hash",
];

// === impl TraceId ===

/// A W3C trace id: 16 bytes, never all zero, shown as 32 lowercase hex digits.
///
/// ```
/// use zt_audit::TraceId;
///
/// let id = TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// // An all-zero trace id is invalid in W3C Trace Context.
/// assert!(TraceId::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// Wraps 16 bytes; `None` when they are all zero (invalid in W3C Trace Context).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A fresh random trace id (from the operating system's random source).
    ///
    /// If the random source fails, a unique id is derived by hashing the time, the
    /// process id and a counter, so this never fails.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_ok()
            && let Some(id) = Self::from_bytes(bytes)
        {
            return id;
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = Sha256::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(now.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let digest = h.finalize();
        bytes.copy_from_slice(&digest[..16]);
        bytes[15] |= 1; // never all zero
        Self(bytes)
    }

    /// The trace id of a W3C `traceparent` header value
    /// (`version-traceid-parentid-flags`), or `None` when the value is not valid:
    /// lowercase hex only, version `ff` is invalid, version `00` has exactly four fields,
    /// neither the trace id nor the parent id may be all zeros.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if v.len() < 55
            || v.get(2) != Some(&b'-')
            || v.get(35) != Some(&b'-')
            || v.get(52) != Some(&b'-')
        {
            return None;
        }
        let (version, trace, parent, flags) =
            (v.get(0..2)?, v.get(3..35)?, v.get(36..52)?, v.get(53..55)?);
        if !lower_hex(version)
            || version == b"ff"
            || !lower_hex(trace)
            || !lower_hex(parent)
            || !lower_hex(flags)
        {
            return None;
        }
        if version == b"00" && v.len() != 55 {
            return None;
        }
        // Future versions may append fields, always after a dash.
        if v.len() > 55 && v.get(55) != Some(&b'-') {
            return None;
        }
        if parent.iter().all(|&c| c == b'0') {
            return None;
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(trace, &mut bytes).ok()?;
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        // Twice the input length: cannot fail; hex digits are ASCII.
        let _ = hex::encode_to_slice(self.0, &mut buf);
        f.write_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl FromStr for TraceId {
    type Err = AuditError;

    /// Parses 32 lowercase hex digits, not all zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || AuditError::Config("a trace id is 32 lowercase hex digits, not all zero".into());
        if s.len() != 32 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| bad())?;
        Self::from_bytes(bytes).ok_or_else(bad)
    }
}

// === impl Record ===

/// One audit event, before the log gives it a sequence number, timestamp and hashes.
///
/// The fixed fields are `kind` (required), `subject`, `action`, `resource`, `decision`,
/// `reason` (written as `null` when not set) and the trace id. Anything else goes into
/// free-form [`field`](Self::field)s, written after the fixed ones in the order they
/// were first added.
///
/// ```
/// use zt_audit::Record;
///
/// let rec = Record::new("http.request")
///     .subject("spiffe://example.org/ns/web/sa/frontend")
///     .action("GET")
///     .resource("/api/v1/users/42")
///     .decision("allow")
///     .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .field("status", 200)
///     .field("latency_us", 812);
/// assert_eq!(rec.field_value("status"), Some(&serde_json::json!(200)));
/// assert_eq!(rec.trace().unwrap().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub(crate) kind: String,
    pub(crate) subject: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) extra: Vec<(String, Value)>,
}

impl Record {
    /// A record of the given event kind (for example `"http.request"` or
    /// `"policy.decision"`).
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            subject: None,
            action: None,
            resource: None,
            decision: None,
            reason: None,
            trace_id: None,
            extra: Vec::new(),
        }
    }

    /// Who acted: a SPIFFE ID, a token subject…
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// What was attempted: an HTTP method, a gRPC method…
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// On what: a path, a gRPC service…
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// The outcome, conventionally `"allow"` or `"deny"`.
    pub fn decision(mut self, decision: impl Into<String>) -> Self {
        self.decision = Some(decision.into());
        self
    }

    /// Why (short text; never a token or key).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Uses this trace id instead of a generated one.
    pub fn trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// Takes the trace id from a W3C `traceparent` header value when it is valid; an
    /// invalid value is ignored (the log then generates a random trace id).
    pub fn traceparent(mut self, value: &str) -> Self {
        if let Some(id) = TraceId::from_traceparent(value) {
            self.trace_id = Some(id);
        }
        self
    }

    /// Adds (or replaces) a free-form field. Names in [`RESERVED_FIELDS`] make the
    /// append fail with [`AuditError::ReservedField`].
    pub fn field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.extra.push((key, value)),
        }
        self
    }

    /// Adds every member of a JSON object as a field (see [`field`](Self::field)); a
    /// value that is not an object is added as nothing.
    pub fn fields(mut self, object: Value) -> Self {
        if let Value::Object(map) = object {
            for (k, v) in map {
                self = self.field(k, v);
            }
        }
        self
    }

    /// The event kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The trace id set so far (`None` means the log will generate one).
    pub fn trace(&self) -> Option<TraceId> {
        self.trace_id
    }

    /// A free-form field's value.
    pub fn field_value(&self, key: &str) -> Option<&Value> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Redacts and serializes everything between `ts` and `prev_hash`:
    /// `,"trace_id":"…","kind":…,"subject":…,…,"reason":…` then the extra fields.
    pub(crate) fn encode_body(mut self, redactor: &Redactor) -> Result<Vec<u8>, AuditError> {
        if let Some((k, _)) = self
            .extra
            .iter()
            .find(|(k, _)| RESERVED_FIELDS.contains(&k.as_str()))
        {
            return Err(AuditError::ReservedField(k.clone()));
        }
        redactor.redact_record(&mut self);
        let trace = self.trace_id.unwrap_or_else(TraceId::generate);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b",\"trace_id\":\"");
        let mut hex_buf = [0u8; 32];
        let _ = hex::encode_to_slice(trace.as_bytes(), &mut hex_buf);
        out.extend_from_slice(&hex_buf);
        out.push(b'"');
        put_str(&mut out, "kind", Some(&self.kind));
        put_str(&mut out, "subject", self.subject.as_deref());
        put_str(&mut out, "action", self.action.as_deref());
        put_str(&mut out, "resource", self.resource.as_deref());
        put_str(&mut out, "decision", self.decision.as_deref());
        put_str(&mut out, "reason", self.reason.as_deref());
        for (k, v) in &self.extra {
            out.push(b',');
            write_json(&mut out, k.as_str());
            out.push(b':');
            write_json(&mut out, v);
        }
        Ok(out)
    }
}

fn put_str(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        Some(v) => write_json(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a `Value` into a Vec cannot fail: keys are strings and
    // non-finite floats cannot be represented in a `Value`.
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceId::from_traceparent(ok).is_some());
        assert!(TraceId::from_traceparent(&format!(" {ok}\t")).is_some());
        // A future version may carry more fields after a dash.
        assert!(
            TraceId::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc"
            )
            .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceId::from_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_trace_ids_differ() {
        let a = TraceId::generate();
        let b = TraceId::generate();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<TraceId>().unwrap(), a);
    }

    #[test]
    fn body_has_fixed_order_and_rejects_reserved_names() {
        let id: TraceId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let body = Record::new("k")
            .subject("s")
            .reason("r\nwith newline")
            .trace_id(id)
            .field("z", 1)
            .field("a", serde_json::json!({"b": [1, 2]}))
            .field("z", 2)
            .encode_body(&Redactor::new())
            .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            ",\"trace_id\":\"0123456789abcdef0123456789abcdef\",\"kind\":\"k\",\"subject\":\"s\",\
             \"action\":null,\"resource\":null,\"decision\":null,\"reason\":\"r\\nwith newline\",\
             \"z\":2,\"a\":{\"b\":[1,2]}"
        );
        let err = Record::new("k")
            .field("hash", "x")
            .encode_body(&Redactor::new())
            .unwrap_err();
        assert!(matches!(err, AuditError::ReservedField(f) if f == "hash"));
    }
}
