//! What inner layers tell the audit layer about a request.
//!
//! [`AuditLayer`](crate::AuditLayer) is outermost, so it cannot see what the layers under it
//! put into the request. It inserts a [`RequestNotes`] slot into the request's extensions;
//! the layers that decide (`RequireIdentity`, `JwtAuth`, `PolicyLayer`) write their verdict
//! into it when it is there. Without an audit layer nothing is allocated or locked.

use std::sync::{Arc, Mutex};

use http::Extensions;

/// One request's verdicts, filled by the deciding layers.
#[cfg_attr(not(feature = "audit"), allow(dead_code))]
#[derive(Debug, Default, Clone)]
pub(crate) struct Notes {
    /// The token subject, when a bearer token was verified.
    pub(crate) token_subject: Option<String>,
    /// `allow` / `deny`, from the last layer that decided.
    pub(crate) decision: Option<&'static str>,
    /// The layer that denied, or `policy` for an allowing policy decision.
    pub(crate) decided_by: Option<&'static str>,
    /// Reasons for the verdict.
    pub(crate) reasons: Vec<String>,
    /// The policy decision id and revision, when a policy decided.
    pub(crate) policy: Option<(String, String)>,
}

/// The shared slot (cheap to clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestNotes(Arc<Mutex<Notes>>);

#[cfg_attr(not(feature = "audit"), allow(dead_code))]
impl RequestNotes {
    pub(crate) fn take(&self) -> Notes {
        match self.0.lock() {
            Ok(mut notes) => std::mem::take(&mut *notes),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Lets `update` fill the notes of this request, if an audit layer is listening.
pub(crate) fn note(extensions: &Extensions, update: impl FnOnce(&mut Notes)) {
    if let Some(RequestNotes(slot)) = extensions.get::<RequestNotes>() {
        match slot.lock() {
            Ok(mut notes) => update(&mut notes),
            Err(poisoned) => update(&mut poisoned.into_inner()),
        }
    }
}

/// Records a denial by `layer`.
pub(crate) fn denied(extensions: &Extensions, layer: &'static str, reason: &str) {
    note(extensions, |n| {
        n.decision = Some("deny");
        n.decided_by = Some(layer);
        n.reasons = vec![reason.to_owned()];
    });
}
