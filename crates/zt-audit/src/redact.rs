//! Removing secrets from records before they are written.

use serde_json::{Map, Value};

use crate::record::Record;

/// The value written in place of anything redacted.
pub const REDACTED: &str = "[REDACTED]";

/// Header names whose values are always redacted by [`Redactor::new`].
pub const DEFAULT_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

/// Decides what never reaches the log file.
///
/// A redactor is applied by [`AuditLog`](crate::AuditLog) to every record before it is
/// serialized, and can be used on its own to prepare JSON (for example a policy input).
/// It replaces with [`REDACTED`]:
///
/// - **by header name** (case-insensitive): the value of any JSON object member, at any
///   depth, whose key is a configured header name — by default
///   [`DEFAULT_REDACTED_HEADERS`] — including a record's top-level fields;
/// - **by JSON pointer** (RFC 6901): the value at each configured pointer. Pointers are
///   relative to the record as written, so `/reason` names the fixed `reason` field and
///   `/input/attributes/request/http/headers/x-api-key` reaches into a free-form field;
/// - **JWT-looking strings**: any run of the form `eyJ….….…` inside any string value
///   (turn off with [`allow_jwt_like_values`](Self::allow_jwt_like_values)).
///
/// ```
/// use serde_json::json;
/// use zt_audit::{Redactor, REDACTED};
///
/// let r = Redactor::new().header("X-Api-Key").pointer("/input/password");
/// let mut v = json!({
///     "headers": {"Authorization": "Bearer abc", "x-api-key": "k", "accept": "*/*"},
///     "input": {"password": "hunter2", "user": "alice"}
/// });
/// r.redact_value(&mut v);
/// assert_eq!(v["headers"]["Authorization"], REDACTED);
/// assert_eq!(v["headers"]["x-api-key"], REDACTED);
/// assert_eq!(v["headers"]["accept"], "*/*");
/// assert_eq!(v["input"]["password"], REDACTED);
/// assert_eq!(v["input"]["user"], "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    headers: Vec<String>,
    pointers: Vec<String>,
    jwt_like: bool,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    /// Redacts [`DEFAULT_REDACTED_HEADERS`] and JWT-looking strings.
    pub fn new() -> Self {
        Self {
            headers: DEFAULT_REDACTED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            pointers: Vec::new(),
            jwt_like: true,
        }
    }

    /// Redacts nothing, not even `Authorization` or `Cookie`. Only for logs that are
    /// themselves secrets.
    pub fn insecure_empty() -> Self {
        Self {
            headers: Vec::new(),
            pointers: Vec::new(),
            jwt_like: false,
        }
    }

    /// Also redacts values of this header name (case-insensitive).
    pub fn header(mut self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref().to_ascii_lowercase();
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }

    /// Also redacts the value at this JSON pointer (RFC 6901, for example
    /// `/input/token`). A pointer that does not start with `/` is refused by
    /// [`AuditLogBuilder::open`](crate::AuditLogBuilder::open) and matches nothing
    /// elsewhere.
    pub fn pointer(mut self, pointer: impl Into<String>) -> Self {
        self.pointers.push(pointer.into());
        self
    }

    /// Stops replacing JWT-looking substrings (`eyJ….….…`) in string values.
    pub fn allow_jwt_like_values(mut self) -> Self {
        self.jwt_like = false;
        self
    }

    /// The configured pointers, for validation.
    pub(crate) fn pointers(&self) -> &[String] {
        &self.pointers
    }

    /// Whether values of this header are redacted.
    pub fn is_sensitive_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Builds a JSON object from header name/value pairs: names lowercased, repeated
    /// headers joined with `", "`, sensitive values replaced with [`REDACTED`] and
    /// JWT-looking substrings removed from the rest.
    ///
    /// ```
    /// use zt_audit::Redactor;
    ///
    /// let h = Redactor::new().redact_headers([("Cookie", "sid=s3cr3t"), ("Accept", "a"), ("accept", "b")]);
    /// assert_eq!(serde_json::Value::Object(h), serde_json::json!({"cookie": "[REDACTED]", "accept": "a, b"}));
    /// ```
    pub fn redact_headers<I, K, V>(&self, headers: I) -> Map<String, Value>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = Map::new();
        for (k, v) in headers {
            let name = k.as_ref().to_ascii_lowercase();
            let value = if self.is_sensitive_header(&name) {
                REDACTED.to_owned()
            } else {
                self.scrub_str(v.as_ref())
            };
            match map.get_mut(&name) {
                Some(Value::String(prev)) => {
                    if prev != REDACTED {
                        prev.push_str(", ");
                        prev.push_str(&value);
                    }
                }
                _ => {
                    map.insert(name, Value::String(value));
                }
            }
        }
        map
    }

    /// Redacts a JSON value in place: sensitive header-named members at any depth, the
    /// configured pointers (relative to `value`), and JWT-looking substrings.
    pub fn redact_value(&self, value: &mut Value) {
        for p in &self.pointers {
            if p.starts_with('/')
                && let Some(target) = value.pointer_mut(p)
            {
                *target = Value::String(REDACTED.to_owned());
            }
        }
        self.walk(value);
    }

    /// Applies the redactor to a record's fixed and free-form fields.
    pub(crate) fn redact_record(&self, rec: &mut Record) {
        for p in &self.pointers {
            let Some(rest) = p.strip_prefix('/') else {
                continue;
            };
            let (first, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let first = first.replace("~1", "/").replace("~0", "~");
            let fixed = match first.as_str() {
                "subject" => Some(&mut rec.subject),
                "action" => Some(&mut rec.action),
                "resource" => Some(&mut rec.resource),
                "decision" => Some(&mut rec.decision),
                "reason" => Some(&mut rec.reason),
                _ => None,
            };
            if let Some(slot) = fixed {
                if tail.is_empty() && slot.is_some() {
                    *slot = Some(REDACTED.to_owned());
                }
                continue;
            }
            if first == "kind" && tail.is_empty() {
                rec.kind = REDACTED.to_owned();
                continue;
            }
            if let Some((_, v)) = rec.extra.iter_mut().find(|(k, _)| *k == first) {
                if tail.is_empty() {
                    *v = Value::String(REDACTED.to_owned());
                } else if let Some(target) = v.pointer_mut(tail) {
                    *target = Value::String(REDACTED.to_owned());
                }
            }
        }
        for (k, v) in &mut rec.extra {
            if self.is_sensitive_header(k) {
                *v = Value::String(REDACTED.to_owned());
            } else {
                self.walk(v);
            }
        }
        if self.jwt_like {
            for s in [
                &mut rec.subject,
                &mut rec.action,
                &mut rec.resource,
                &mut rec.decision,
                &mut rec.reason,
            ]
            .into_iter()
            .flatten()
            {
                self.scrub_in_place(s);
            }
            self.scrub_in_place(&mut rec.kind);
        }
    }

    fn walk(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.is_sensitive_header(k) {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.walk(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.walk(v)),
            Value::String(s) => self.scrub_in_place(s),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn scrub_in_place(&self, s: &mut String) {
        if self.jwt_like && s.contains("eyJ") {
            *s = self.scrub_str(s);
        }
    }

    /// Replaces JWT-looking runs in `s` (when enabled).
    fn scrub_str(&self, s: &str) -> String {
        if !self.jwt_like || !s.contains("eyJ") {
            return s.to_owned();
        }
        let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        let bytes = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut copied = 0;
        let mut i = 0;
        while let Some(found) = s.get(i..).and_then(|rest| rest.find("eyJ")) {
            let start = i + found;
            let boundary = start == 0
                || bytes
                    .get(start - 1)
                    .is_some_and(|&c| !is_b64(c) && c != b'.');
            let mut end = start;
            while bytes.get(end).is_some_and(|&c| is_b64(c) || c == b'.') {
                end += 1;
            }
            let run = s.get(start..end).unwrap_or("");
            let parts: Vec<&str> = run.split('.').collect();
            let looks_like_jwt = boundary
                && parts.len() == 3
                && parts.first().is_some_and(|p| p.len() >= 4)
                && parts.get(1).is_some_and(|p| !p.is_empty());
            if looks_like_jwt {
                out.push_str(s.get(copied..start).unwrap_or(""));
                out.push_str(REDACTED);
                copied = end;
            }
            i = end.max(start + 3);
        }
        out.push_str(s.get(copied..).unwrap_or(""));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    #[test]
    fn jwt_like_substrings_are_scrubbed() {
        let r = Redactor::new();
        assert_eq!(r.scrub_str(&format!("Bearer {JWT}")), "Bearer [REDACTED]");
        assert_eq!(
            r.scrub_str(&format!("{JWT},{JWT}")),
            "[REDACTED],[REDACTED]"
        );
        assert_eq!(r.scrub_str("eyJust a word"), "eyJust a word");
        assert_eq!(r.scrub_str("keyJar.a.b"), "keyJar.a.b");
        assert_eq!(r.scrub_str("héllo eyJé"), "héllo eyJé");
        assert_eq!(Redactor::new().allow_jwt_like_values().scrub_str(JWT), JWT);
    }

    #[test]
    fn record_pointers_reach_fixed_and_extra_fields() {
        let r = Redactor::new().pointer("/reason").pointer("/input/a~1b/0");
        let mut rec = Record::new("k")
            .reason("secret reason")
            .field("input", serde_json::json!({"a/b": ["x", "y"]}))
            .field("Cookie", "sid=1");
        r.redact_record(&mut rec);
        assert_eq!(rec.reason.as_deref(), Some(REDACTED));
        assert_eq!(
            rec.field_value("input"),
            Some(&serde_json::json!({"a/b": [REDACTED, "y"]}))
        );
        assert_eq!(
            rec.field_value("Cookie"),
            Some(&serde_json::json!(REDACTED))
        );
    }
}
