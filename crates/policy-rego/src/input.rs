//! The policy input document, shaped like OPA-Envoy's `ext_authz` input so existing policies
//! port over unchanged.
//!
//! ```json
//! {
//!   "attributes": {
//!     "request": {"http": {"method": "GET", "path": "/api/v1/users/42?x=1", "host": "api",
//!                          "scheme": "https", "protocol": "HTTP/2", "headers": {"accept": "*/*"}}},
//!     "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}},
//!                "principal": "spiffe://example.org/ns/web/sa/frontend"},
//!     "destination": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8443}}}
//!   },
//!   "parsed_path": ["api", "v1", "users", "42"],
//!   "parsed_query": {"x": ["1"]},
//!   "version": {"encoding": "protojson", "ext_authz": "v3"},
//!   "identity": {"spiffe_id": "...", "...": "..."},
//!   "token": {"iss": "...", "sub": "...", "scope": "..."},
//!   "grpc": {"service": "helloworld.Greeter", "method": "SayHello"}
//! }
//! ```
//!
//! Parts whose source is absent are left out (no `source` without a peer address, no
//! `identity` without an identity, ...). `parsed_path` and `parsed_query` follow OPA-Envoy:
//! the path is percent-decoded, stripped of leading `/` and split on `/` (so `/` gives `[""]`);
//! the query is decoded like Go's `url.ParseQuery` (`+` is a space, malformed pairs are
//! dropped).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, Method, Uri, Version, header};
use regorus::Value;

use crate::error::{PolicyError, Result};

/// A JSON document converted once into the policy engine's values: cheap to clone (its parts
/// are reference counted), so a part of the input that stays the same across requests, such
/// as the peer identity of a connection, is converted once and then shared.
///
/// ```
/// use policy_rego::InputDocument;
///
/// let identity = InputDocument::from(serde_json::json!({"spiffe_id": "spiffe://example.org/web"}));
/// assert_eq!(identity.spiffe_id(), Some("spiffe://example.org/web"));
/// let per_request = identity.clone(); // no deep copy
/// # drop(per_request);
/// ```
#[derive(Debug, Clone)]
pub struct InputDocument {
    value: Value,
    spiffe_id: Option<std::sync::Arc<str>>,
}

impl InputDocument {
    /// The document's top-level `spiffe_id` string, if any (the default principal).
    pub fn spiffe_id(&self) -> Option<&str> {
        self.spiffe_id.as_deref()
    }
}

impl From<serde_json::Value> for InputDocument {
    fn from(json: serde_json::Value) -> Self {
        let spiffe_id = json
            .get("spiffe_id")
            .and_then(serde_json::Value::as_str)
            .map(std::sync::Arc::from);
        Self {
            value: Value::from(json),
            spiffe_id,
        }
    }
}

/// Which request headers are copied into the input.
///
/// By default every header is copied except those that carry credentials: `authorization`,
/// `cookie` and `proxy-authorization` (the token's verified claims reach the policy as
/// `input.token` instead). Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) are not
/// added unless asked for.
#[derive(Debug, Clone)]
pub struct InputOptions {
    excluded: Vec<HeaderName>,
    pseudo_headers: bool,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            excluded: vec![
                header::AUTHORIZATION,
                header::COOKIE,
                header::PROXY_AUTHORIZATION,
            ],
            pseudo_headers: false,
        }
    }
}

impl InputOptions {
    /// The strict default (credential headers left out).
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies a header that is left out by default (e.g. `authorization`, for a policy
    /// written for OPA-Envoy that decodes Basic credentials itself).
    #[must_use]
    pub fn allow_secret_header(mut self, name: HeaderName) -> Self {
        self.excluded.retain(|h| *h != name);
        self
    }

    /// Leaves another header out of the input.
    #[must_use]
    pub fn exclude_header(mut self, name: HeaderName) -> Self {
        if !self.excluded.contains(&name) {
            self.excluded.push(name);
        }
        self
    }

    /// Adds Envoy's pseudo-headers (`:authority`, `:method`, `:path`, and `:scheme` when
    /// known) to `headers`, as Envoy's `ext_authz` does.
    #[must_use]
    pub fn include_pseudo_headers(mut self) -> Self {
        self.pseudo_headers = true;
        self
    }

    fn is_excluded(&self, name: &HeaderName) -> bool {
        self.excluded.iter().any(|h| h == name)
    }
}

/// A built input document, ready for [`PolicySet::decide`](crate::PolicySet::decide).
///
/// Cheap to clone (the document is reference-counted).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    pub(crate) value: Value,
}

impl PolicyInput {
    /// An input from any JSON document (as `opa eval --input` takes).
    pub fn from_json(json: serde_json::Value) -> Self {
        Self {
            value: Value::from(json),
        }
    }

    /// An input from JSON text.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Input`] if the text is not valid JSON.
    pub fn from_json_str(json: &str) -> Result<Self> {
        Value::from_json_str(json)
            .map(|value| Self { value })
            .map_err(|e| PolicyError::Input(e.to_string()))
    }

    /// The document as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.value).unwrap_or(serde_json::Value::Null)
    }

    /// Looks up a value by JSON pointer (`/attributes/request/http/method`).
    pub fn pointer(&self, pointer: &str) -> Option<serde_json::Value> {
        self.to_json().pointer(pointer).cloned()
    }
}

/// Builds a [`PolicyInput`] from an HTTP request and what the layers before the policy
/// learned about the caller.
///
/// ```
/// use policy_rego::{InputBuilder, InputOptions};
///
/// let req = http::Request::builder()
///     .method("POST")
///     .uri("/helloworld.Greeter/SayHello?trace=1")
///     .header("content-type", "application/grpc")
///     .header("authorization", "Bearer secret")
///     .body(())
///     .unwrap();
/// let (parts, ()) = req.into_parts();
/// let input = InputBuilder::from_parts(&parts)
///     .peer_addr("10.0.0.7:51234".parse().unwrap())
///     .identity(serde_json::json!({"spiffe_id": "spiffe://example.org/web"}))
///     .token(serde_json::json!({"sub": "alice", "scope": "greet"}))
///     .build(&InputOptions::default());
/// let json = input.to_json();
/// assert_eq!(json["attributes"]["source"]["principal"], "spiffe://example.org/web");
/// assert_eq!(json["grpc"]["method"], "SayHello");
/// assert_eq!(json["parsed_query"]["trace"][0], "1");
/// assert!(json["attributes"]["request"]["http"]["headers"].get("authorization").is_none());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct InputBuilder<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    version: Option<Version>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    principal: Option<String>,
    identity: Option<InputDocument>,
    token: Option<InputDocument>,
    grpc: Option<(String, String)>,
}

impl<'a> InputBuilder<'a> {
    /// Starts from a request's method, URI, version and headers.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        let mut b = Self::new(&parts.method, &parts.uri, &parts.headers);
        b.version = Some(parts.version);
        b
    }

    /// Starts from a method, URI and headers.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            uri,
            headers,
            version: None,
            peer: None,
            local: None,
            principal: None,
            identity: None,
            token: None,
            grpc: None,
        }
    }

    /// The HTTP version (`attributes.request.http.protocol`).
    pub fn version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// The peer's socket address (`attributes.source.address.socketAddress`).
    pub fn peer_addr(mut self, addr: SocketAddr) -> Self {
        self.peer = Some(addr);
        self
    }

    /// The local socket address (`attributes.destination.address.socketAddress`).
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.local = Some(addr);
        self
    }

    /// The authenticated peer principal (`attributes.source.principal`), normally the SPIFFE
    /// ID of the client certificate. Defaults to the identity's `spiffe_id`.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// The verified peer identity (`input.identity`), e.g. a serialized `PeerIdentity` with
    /// `spiffe_id`, `dns_sans`, `subject_cn`, `fingerprint_sha256`: JSON, or an
    /// [`InputDocument`] converted once per connection.
    pub fn identity(mut self, identity: impl Into<InputDocument>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// The verified token claims (`input.token`): JSON or an [`InputDocument`].
    pub fn token(mut self, claims: impl Into<InputDocument>) -> Self {
        self.token = Some(claims.into());
        self
    }

    /// The gRPC service and method (`input.grpc`). Without this call they are taken from the
    /// path when the request's `content-type` is `application/grpc*` and the path has the
    /// form `/package.Service/Method`.
    pub fn grpc(mut self, service: impl Into<String>, method: impl Into<String>) -> Self {
        self.grpc = Some((service.into(), method.into()));
        self
    }

    /// Builds the document.
    pub fn build(self, options: &InputOptions) -> PolicyInput {
        let path_and_query = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let path_and_query = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        let host = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                self.headers
                    .get(header::HOST)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            });

        // headers
        let mut headers: BTreeMap<Value, Value> = BTreeMap::new();
        for name in self.headers.keys() {
            if options.is_excluded(name) {
                continue;
            }
            let mut joined = String::new();
            for (i, v) in self.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    joined.push(',');
                }
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            headers.insert(Value::from(name.as_str()), Value::from(joined));
        }
        if options.pseudo_headers {
            headers.insert(Value::from(":method"), Value::from(self.method.as_str()));
            headers.insert(Value::from(":path"), Value::from(path_and_query));
            if let Some(h) = &host {
                headers.insert(Value::from(":authority"), Value::from(h.as_str()));
            }
            if let Some(s) = self.uri.scheme_str() {
                headers.insert(Value::from(":scheme"), Value::from(s));
            }
        }

        let mut http_obj: BTreeMap<Value, Value> = BTreeMap::new();
        http_obj.insert(Value::from("method"), Value::from(self.method.as_str()));
        http_obj.insert(Value::from("path"), Value::from(path_and_query));
        if let Some(h) = &host {
            http_obj.insert(Value::from("host"), Value::from(h.as_str()));
        }
        if let Some(s) = self.uri.scheme_str() {
            http_obj.insert(Value::from("scheme"), Value::from(s));
        }
        if let Some(v) = self.version.and_then(protocol_name) {
            http_obj.insert(Value::from("protocol"), Value::from(v));
        }
        http_obj.insert(Value::from("headers"), Value::from(headers));

        let mut attributes: BTreeMap<Value, Value> = BTreeMap::new();
        attributes.insert(
            Value::from("request"),
            obj([("http", Value::from(http_obj))]),
        );

        let principal = self.principal.clone().or_else(|| {
            self.identity
                .as_ref()
                .and_then(InputDocument::spiffe_id)
                .map(str::to_owned)
        });
        if self.peer.is_some() || principal.is_some() {
            let mut source: BTreeMap<Value, Value> = BTreeMap::new();
            if let Some(addr) = self.peer {
                source.insert(Value::from("address"), socket_address(addr));
            }
            if let Some(p) = principal {
                source.insert(Value::from("principal"), Value::from(p));
            }
            attributes.insert(Value::from("source"), Value::from(source));
        }
        if let Some(addr) = self.local {
            attributes.insert(
                Value::from("destination"),
                obj([("address", socket_address(addr))]),
            );
        }

        let path_only = path_and_query.split('?').next().unwrap_or("/");
        let query = path_and_query.split_once('?').map(|(_, q)| q);

        let mut root: BTreeMap<Value, Value> = BTreeMap::new();
        root.insert(Value::from("attributes"), Value::from(attributes));
        root.insert(Value::from("parsed_path"), parsed_path(path_only));
        root.insert(
            Value::from("parsed_query"),
            parsed_query(query.unwrap_or_default()),
        );
        root.insert(
            Value::from("version"),
            obj([
                ("encoding", Value::from("protojson")),
                ("ext_authz", Value::from("v3")),
            ]),
        );
        if let Some(identity) = self.identity {
            root.insert(Value::from("identity"), identity.value);
        }
        if let Some(token) = self.token {
            root.insert(Value::from("token"), token.value);
        }
        let grpc = self.grpc.or_else(|| detect_grpc(self.headers, path_only));
        if let Some((service, method)) = grpc {
            root.insert(
                Value::from("grpc"),
                obj([
                    ("service", Value::from(service)),
                    ("method", Value::from(method)),
                ]),
            );
        }
        PolicyInput {
            value: Value::from(root),
        }
    }
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn socket_address(addr: SocketAddr) -> Value {
    obj([(
        "socketAddress",
        obj([
            ("address", Value::from(addr.ip().to_string())),
            ("portValue", Value::from(u64::from(addr.port()))),
        ]),
    )])
}

fn protocol_name(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => return None,
    })
}

fn detect_grpc(headers: &HeaderMap, path: &str) -> Option<(String, String)> {
    let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
    if !ct.starts_with(b"application/grpc") {
        return None;
    }
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service.to_owned(), method.to_owned()))
}

/// OPA-Envoy's `parsed_path`: percent-decode, trim leading `/`, split on `/`.
pub(crate) fn parsed_path(path: &str) -> Value {
    let decoded = percent_decode(path, false).unwrap_or_else(|| path.to_owned());
    let trimmed = decoded.trim_start_matches('/');
    Value::from(trimmed.split('/').map(Value::from).collect::<Vec<Value>>())
}

/// Go's `url.ParseQuery`: `&`-separated pairs, `+` means space, pairs with a bad escape or a
/// `;` are dropped.
pub(crate) fn parsed_query(query: &str) -> Value {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pair in query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else {
            continue;
        };
        out.entry(k).or_default().push(Value::from(v));
    }
    Value::from(
        out.into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// Percent-decoding; `None` on a malformed escape. Invalid UTF-8 is replaced.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    if !(s.contains('%') || plus_is_space && s.contains('+')) {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &Value) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn parsed_path_follows_opa_envoy() {
        assert_eq!(json(&parsed_path("/")), serde_json::json!([""]));
        assert_eq!(
            json(&parsed_path("/api/v1/users/42")),
            serde_json::json!(["api", "v1", "users", "42"])
        );
        assert_eq!(
            json(&parsed_path("/a%20b/c/")),
            serde_json::json!(["a b", "c", ""])
        );
        // Go decodes %2F before splitting.
        assert_eq!(json(&parsed_path("/a%2Fb")), serde_json::json!(["a", "b"]));
        // A malformed escape keeps the raw path.
        assert_eq!(json(&parsed_path("/a%zz")), serde_json::json!(["a%zz"]));
    }

    #[test]
    fn parsed_query_follows_go_parse_query() {
        assert_eq!(
            json(&parsed_query("x=1&x=2&y=a+b&z&w=%41&bad=%zz&s=1;2")),
            serde_json::json!({"x": ["1", "2"], "y": ["a b"], "z": [""], "w": ["A"]})
        );
        assert_eq!(json(&parsed_query("")), serde_json::json!({}));
    }
}
