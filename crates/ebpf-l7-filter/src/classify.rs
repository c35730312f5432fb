//! The userspace twin: what the kernel decides for one TCP payload
//! ([`RuleSet::classify_segment`]) and what the in-process layer decides for one parsed
//! request ([`RuleSet::decide`]), with the same checks and the same matching.

use crate::RuleSet;
use crate::path::check_canonical;
use crate::verdict::{Decision, FLOOR_ANY, MAX_METHOD, MAX_PATH, Method, Reason, Verdict};

/// What the kernel does with one TCP payload on a flow not yet marked denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification<'a> {
    /// Not the start of a request (empty payload, body bytes, a continuation): passed, no
    /// event.
    NotRequest,
    /// The payload starts a request (or looks like it might): decided.
    Request(SegmentRequest<'a>),
}

impl Classification<'_> {
    /// The decision, `None` for [`Classification::NotRequest`].
    pub fn decision(&self) -> Option<Decision> {
        match self {
            Classification::NotRequest => None,
            Classification::Request(r) => Some(r.decision),
        }
    }

    /// Whether the segment goes through (always, unless a request start was denied).
    pub fn is_passed(&self) -> bool {
        self.decision().is_none_or(|d| d.verdict().is_allowed())
    }
}

/// A request start as the kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRequest<'a> {
    method: Option<Method>,
    method_text: &'a [u8],
    path: &'a [u8],
    decision: Decision,
}

impl<'a> SegmentRequest<'a> {
    /// The method, `None` for any other token (kernel method id 0).
    pub fn method(&self) -> Option<Method> {
        self.method
    }

    /// The kernel's method id: 1..=9, or 0 for other.
    pub fn method_id(&self) -> u8 {
        Method::id_of(self.method)
    }

    /// The method token's bytes (at most [`MAX_METHOD`]).
    pub fn method_text(&self) -> &'a [u8] {
        self.method_text
    }

    /// The path bytes read (before the query; for a split request the bytes up to the end
    /// of the segment, for an overlong one the first [`MAX_PATH`]; empty when the method
    /// was split or overlong). Events carry the first
    /// [`EVENT_PATH_MAX`](crate::EVENT_PATH_MAX) of them.
    pub fn path(&self) -> &'a [u8] {
        self.path
    }

    /// The verdict, its reason and the winning rule.
    pub fn decision(&self) -> Decision {
        self.decision
    }
}

fn is_path_end(b: u8) -> bool {
    matches!(b, b' ' | b'\r' | b'\n' | b'?')
}

impl RuleSet {
    /// What the kernel program decides for one TCP payload arriving on a flow that is not
    /// marked denied: request-start detection, the method, the path, the split / overlong /
    /// non-canonical outcomes, matching and the verdict, exactly as the spec in
    /// `docs/ebpf.md` defines them. Never panics, whatever the bytes.
    ///
    /// ```
    /// use ebpf_l7_filter::{Classification, Reason, RuleSet, Verdict};
    ///
    /// let rules = RuleSet::from_yaml(r#"
    /// default: allow
    /// rules:
    ///   - { id: admin, action: deny, path: { prefix: "/admin" } }
    /// "#)?;
    /// let c = rules.classify_segment(b"GET /admin/users?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    /// let d = c.decision().unwrap();
    /// assert_eq!((d.verdict(), d.reason(), d.kernel_rule_id()), (Verdict::Deny, Reason::Rule, 1));
    /// // The same target split across segments, or disguised, never gets through.
    /// assert_eq!(rules.classify_segment(b"GET /adm").decision().unwrap().reason(), Reason::Split);
    /// assert_eq!(rules.classify_segment(b"GET /x/../admin HTTP/1.1\r\n").decision().unwrap().reason(),
    ///            Reason::NonCanonical);
    /// assert_eq!(rules.classify_segment(b"{\"json\": 1}"), Classification::NotRequest);
    /// # Ok::<(), ebpf_l7_filter::FilterError>(())
    /// ```
    pub fn classify_segment<'a>(&self, payload: &'a [u8]) -> Classification<'a> {
        let letters = payload
            .iter()
            .take(MAX_METHOD + 1)
            .take_while(|b| b.is_ascii_uppercase())
            .count();
        if letters == 0 {
            return Classification::NotRequest;
        }
        let refused = |floor: usize, reason: Reason, text: &'a [u8], path: &'a [u8]| {
            Classification::Request(SegmentRequest {
                method: None,
                method_text: text,
                path,
                decision: Decision::new(self.refusal(floor), reason, None),
            })
        };
        if letters > MAX_METHOD {
            let text = payload.get(..MAX_METHOD).unwrap_or_default();
            return refused(0, Reason::Overlong, text, &[]);
        }
        let (method_text, rest) = payload.split_at(letters);
        match rest.first() {
            None => return refused(FLOOR_ANY, Reason::Split, method_text, &[]),
            Some(b' ') => {}
            Some(_) => return Classification::NotRequest,
        }
        let method = Method::from_token(method_text);
        let target = rest.get(1..).unwrap_or_default();
        let (path, outcome) = match target
            .iter()
            .take(MAX_PATH + 1)
            .position(|&b| is_path_end(b))
        {
            Some(end) => (target.get(..end).unwrap_or_default(), None),
            None if target.len() <= MAX_PATH => (target, Some(Reason::Split)),
            None => (
                target.get(..MAX_PATH).unwrap_or_default(),
                Some(Reason::Overlong),
            ),
        };
        let outcome = outcome.or_else(|| check_canonical(path).err().map(|_| Reason::NonCanonical));
        let decision = match outcome {
            Some(reason) => Decision::new(
                self.refusal(usize::from(Method::id_of(method))),
                reason,
                None,
            ),
            None => self.matched(method, path),
        };
        Classification::Request(SegmentRequest {
            method,
            method_text,
            path,
            decision,
        })
    }

    /// The in-process decision for a parsed request: `path_and_query` is the request
    /// target as the server read it (`/api/orders/7?x=1`; for gRPC `/package.Service/Method`).
    /// The same checks as the kernel's (an empty or non-`/` target, a path longer than
    /// [`MAX_PATH`], a non-canonical path are refused in strict mode) and the same matching;
    /// extension methods are "other" and match only rules without `methods`.
    ///
    /// ```
    /// use ebpf_l7_filter::{RuleSet, Verdict};
    ///
    /// let rules = RuleSet::from_yaml(r#"
    /// rules:
    ///   - { id: greeter, action: allow, methods: [POST], path: { prefix: "/helloworld.Greeter" } }
    /// "#)?;
    /// assert_eq!(rules.decide(&http::Method::POST, "/helloworld.Greeter/SayHello").verdict(),
    ///            Verdict::Allow);
    /// assert_eq!(rules.decide(&http::Method::POST, "/helloworld.Admin/Reset").verdict(),
    ///            Verdict::Deny);
    /// # Ok::<(), ebpf_l7_filter::FilterError>(())
    /// ```
    pub fn decide(&self, method: &http::Method, path_and_query: &str) -> Decision {
        let method = Method::from_http(method);
        let bytes = path_and_query.as_bytes();
        let path = match bytes.iter().position(|&b| b == b'?') {
            Some(end) => bytes.get(..end).unwrap_or_default(),
            None => bytes,
        };
        let floor = usize::from(Method::id_of(method));
        if path.len() > MAX_PATH {
            return Decision::new(self.refusal(floor), Reason::Overlong, None);
        }
        if check_canonical(path).is_err() {
            return Decision::new(self.refusal(floor), Reason::NonCanonical, None);
        }
        self.matched(method, path)
    }

    fn matched(&self, method: Option<Method>, path: &[u8]) -> Decision {
        match self.winner(method, path) {
            Some(i) => {
                let action = self
                    .rules()
                    .get(i as usize)
                    .map_or(Verdict::Deny, |r| r.action());
                Decision::new(action, Reason::Rule, Some(i))
            }
            None => Decision::new(self.default_verdict(), Reason::Default, None),
        }
    }
}
