//! Who decided a request, carried back up on its response.
//!
//! Identity flows down as request extensions; verdicts flow back up as response
//! extensions. Every layer and extractor of this crate that refuses a request attaches a
//! deny [`Verdict`] to the refusal it answers with, and every gate that lets a request
//! through attaches its allow verdict to the response on the way out — unless a layer or
//! extractor further in already left one: the innermost decision stands.
//! `AuditLayer` reads it from the response. A response that carries
//! no verdict was decided by the application alone, and is recorded that way.
//!
//! | `decided_by` | who |
//! |---|---|
//! | `identity` | [`RequireIdentityLayer`](crate::RequireIdentityLayer) |
//! | `jwt` | `JwtAuthLayer` (feature `jwt`) |
//! | `scope` | `RequireClaimsLayer` (feature `jwt`) |
//! | `policy` | `PolicyLayer` (feature `policy`) |
//! | `l7` | `L7RulesLayer` (feature `l7`) |
//! | `VerifiedPeer`, `TokenClaims`, `Decision` | the axum extractors of those names, when they refuse |
//!
//! Your own layers and extractors attach verdicts the same way:
//!
//! ```
//! use http::{HeaderMap, Response, StatusCode};
//! use zt_tower::{Rejection, Verdict, response_verdict};
//!
//! // A refusal built with `into_refusal` carries a deny verdict naming the decider.
//! let res: Response<String> =
//!     Rejection::permission_denied("tenant mismatch").into_refusal("tenant", &HeaderMap::new());
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! let verdict = response_verdict(res.extensions()).unwrap();
//! assert_eq!((verdict.decided_by(), verdict.is_allow()), ("tenant", false));
//! assert_eq!(verdict.reasons(), ["tenant mismatch"]);
//!
//! // A gate that let the request through stamps its verdict only where none is yet.
//! let mut ok: Response<String> = Response::new("hello".into());
//! Verdict::allow("tenant").attach_if_absent(&mut ok);
//! Verdict::allow("outer-gate").attach_if_absent(&mut ok);
//! assert_eq!(response_verdict(ok.extensions()).unwrap().decided_by(), "tenant");
//! ```

use std::borrow::Cow;

use http::{Extensions, Response};

/// A layer's or extractor's decision on one request: who decided, allow or deny, why.
/// Travels in the response's extensions; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    decided_by: Cow<'static, str>,
    allow: bool,
    reasons: Vec<String>,
}

impl Verdict {
    /// `decided_by` let the request through.
    pub fn allow(decided_by: impl Into<Cow<'static, str>>) -> Self {
        Verdict {
            decided_by: decided_by.into(),
            allow: true,
            reasons: Vec::new(),
        }
    }

    /// `decided_by` refused the request, for `reason` (short; never a token or a key).
    pub fn deny(decided_by: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Verdict {
            decided_by: decided_by.into(),
            allow: false,
            reasons: vec![reason.into()],
        }
    }

    /// Adds a reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    /// Adds reasons.
    pub fn with_reasons<I>(mut self, reasons: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.reasons.extend(reasons.into_iter().map(Into::into));
        self
    }

    /// Who decided (`identity`, `jwt`, `policy`, … — see the module docs).
    pub fn decided_by(&self) -> &str {
        &self.decided_by
    }

    /// Whether the request was let through.
    pub fn is_allow(&self) -> bool {
        self.allow
    }

    /// Why, in the decider's words (may be empty for an allow).
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// Puts this verdict on `response`, replacing any there: for the one who refuses, whose
    /// word is final.
    pub fn attach<B>(self, response: &mut Response<B>) {
        response.extensions_mut().insert(self);
    }

    /// Puts this verdict on `response` unless a layer or extractor further in already left
    /// one: for gates that let the request through, on the response's way out.
    pub fn attach_if_absent<B>(self, response: &mut Response<B>) {
        let extensions = response.extensions_mut();
        if extensions.get::<Verdict>().is_none() {
            extensions.insert(self);
        }
    }
}

/// The verdict a response carries, if any layer or extractor decided its request.
pub fn response_verdict(extensions: &Extensions) -> Option<&Verdict> {
    extensions.get::<Verdict>()
}

/// What a gate that let a request through adds to the response on its way back.
pub(crate) struct Passed {
    verdict: Verdict,
    /// The policy decision that allowed the request, for the audit record.
    #[cfg(feature = "policy")]
    decision: Option<std::sync::Arc<policy_rego::PolicyDecision>>,
    /// What the l7 rules decided, for the audit record.
    #[cfg(feature = "l7")]
    l7: Option<crate::l7::L7Decision>,
}

impl Passed {
    pub(crate) fn new(verdict: Verdict) -> Self {
        Passed {
            verdict,
            #[cfg(feature = "policy")]
            decision: None,
            #[cfg(feature = "l7")]
            l7: None,
        }
    }

    #[cfg(feature = "policy")]
    pub(crate) fn with_decision(
        mut self,
        decision: std::sync::Arc<policy_rego::PolicyDecision>,
    ) -> Self {
        self.decision = Some(decision);
        self
    }

    #[cfg(feature = "l7")]
    pub(crate) fn with_l7(mut self, decision: crate::l7::L7Decision) -> Self {
        self.l7 = Some(decision);
        self
    }

    pub(crate) fn stamp<B>(self, response: &mut Response<B>) {
        self.verdict.attach_if_absent(response);
        #[cfg(feature = "policy")]
        if let Some(decision) = self.decision {
            response.extensions_mut().get_or_insert(decision);
        }
        #[cfg(feature = "l7")]
        if let Some(decision) = self.l7 {
            response.extensions_mut().get_or_insert(decision);
        }
    }
}
