//! The small vocabulary both enforcement points share: methods, verdicts, reasons, and the
//! limits the kernel works within. Numeric codes are the ones the C program uses.

/// The longest path (bytes before the query) the kernel reads; a longer one is
/// [`Reason::Overlong`]. Rule paths may not be longer.
pub const MAX_PATH: usize = 128;
/// The longest method token the kernel reads (`A`-`Z` only); 17 or more capital letters at
/// the start of a segment are [`Reason::Overlong`].
pub const MAX_METHOD: usize = 16;
/// How many bytes of the path a kernel audit event carries.
pub const EVENT_PATH_MAX: usize = 64;
/// The most rules a rule file may have (the size of the kernel's rule maps).
pub const MAX_RULES: usize = 1024;
/// The longest rule id, in bytes.
pub const MAX_RULE_ID: usize = 64;
/// Index of the "any method" entry in [`RuleSet::floors`](crate::RuleSet::floors).
pub const FLOOR_ANY: usize = 10;

/// One of the nine methods rules can name. Any other method token has id 0 ("other") and is
/// matched only by rules without `methods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Method {
    /// `GET` (id 1).
    Get = 1,
    /// `HEAD` (id 2).
    Head = 2,
    /// `POST` (id 3).
    Post = 3,
    /// `PUT` (id 4).
    Put = 4,
    /// `DELETE` (id 5).
    Delete = 5,
    /// `CONNECT` (id 6).
    Connect = 6,
    /// `OPTIONS` (id 7).
    Options = 7,
    /// `TRACE` (id 8).
    Trace = 8,
    /// `PATCH` (id 9).
    Patch = 9,
}

impl Method {
    /// All nine, in id order.
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];

    /// The method's id (1..=9) as the kernel reports it.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The id of an optional method: 0 for "other".
    pub fn id_of(method: Option<Method>) -> u8 {
        method.map_or(0, Method::id)
    }

    /// The upper-case token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }

    /// The method a token names, exactly (case-sensitive, as HTTP methods are).
    ///
    /// ```
    /// use ebpf_l7_filter::Method;
    /// assert_eq!(Method::from_token(b"GET"), Some(Method::Get));
    /// assert_eq!(Method::from_token(b"get"), None);
    /// assert_eq!(Method::from_token(b"PROPFIND"), None);
    /// ```
    pub fn from_token(token: &[u8]) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().as_bytes() == token)
    }

    /// The method of an [`http::Method`]; `None` for extension methods.
    pub fn from_http(method: &http::Method) -> Option<Method> {
        Method::from_token(method.as_str().as_bytes())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a request: a rule's `action`, the file's `default`, or a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// Let it through (code 0).
    Allow = 0,
    /// Refuse it (code 1): the kernel drops the segment and marks the flow denied; the
    /// layer answers 403 / `PERMISSION_DENIED`.
    Deny = 1,
    /// Let it through and report it (code 2).
    Audit = 2,
}

impl Verdict {
    /// The numeric code the kernel uses.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the request goes through (`Allow` or `Audit`).
    pub fn is_allowed(self) -> bool {
        !matches!(self, Verdict::Deny)
    }

    /// `allow`, `deny` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }

    /// Rank in the order of permissiveness deny < audit < allow.
    pub(crate) fn permissiveness(self) -> u8 {
        match self {
            Verdict::Deny => 0,
            Verdict::Audit => 1,
            Verdict::Allow => 2,
        }
    }

    /// The less permissive of two verdicts.
    pub fn least_permissive(self, other: Verdict) -> Verdict {
        if other.permissiveness() < self.permissiveness() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// A rule matched (code 0).
    Rule = 0,
    /// No rule matched: the file's `default` (code 1).
    Default = 1,
    /// The request line ended with the segment before the path did (code 2).
    Split = 2,
    /// The method (17+ capital letters) or the path (more than [`MAX_PATH`] bytes) is too
    /// long to read (code 3).
    Overlong = 3,
    /// The target is not a canonical origin-form path (code 4).
    NonCanonical = 4,
    /// The connection was already denied (kernel flow state only, code 5).
    FlowDenied = 5,
}

impl Reason {
    /// The numeric code the kernel uses.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// `rule`, `default`, `split`, `overlong`, `non_canonical` or `flow_denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Default => "default",
            Reason::Split => "split",
            Reason::Overlong => "overlong",
            Reason::NonCanonical => "non_canonical",
            Reason::FlowDenied => "flow_denied",
        }
    }

    /// Whether the request was refused (or, in non-strict mode, given the floor verdict)
    /// before matching because it could not be read with confidence.
    pub fn is_parse_outcome(self) -> bool {
        matches!(
            self,
            Reason::Split | Reason::Overlong | Reason::NonCanonical
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict for one request, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    verdict: Verdict,
    reason: Reason,
    rule: Option<u32>,
}

impl Decision {
    pub(crate) fn new(verdict: Verdict, reason: Reason, rule: Option<u32>) -> Decision {
        Decision {
            verdict,
            reason,
            rule,
        }
    }

    /// Allow, deny or audit.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The 0-based index of the winning rule in [`RuleSet::rules`](crate::RuleSet::rules),
    /// when a rule decided.
    pub fn rule_index(&self) -> Option<usize> {
        self.rule.map(|i| i as usize)
    }

    /// The rule id the kernel reports: the rule's 1-based position in the file, 0 when no
    /// rule decided.
    pub fn kernel_rule_id(&self) -> u32 {
        self.rule.map_or(0, |i| i + 1)
    }

    /// Whether the kernel emits an audit event for this decision: every deny and audit
    /// verdict, and every split / overlong / non-canonical request (also when non-strict
    /// mode lets it through).
    pub fn emits_event(&self) -> bool {
        self.verdict != Verdict::Allow || self.reason.is_parse_outcome()
    }
}
