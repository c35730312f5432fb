//! The one status shape every holder reports, and the recorder holders embed to keep it.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// How a holder's material has rotated: the same shape for TLS material, policy sets and
/// key sets, so one dashboard or health check reads them all.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationStatus {
    /// Bumped by one for every update published (0: nothing loaded yet).
    pub generation: u64,
    /// When the material serving now was published (`None`: nothing loaded yet).
    pub loaded_at: Option<SystemTime>,
    /// When an update was last taken whole.
    pub last_success: Option<SystemTime>,
    /// The last refused update or failed source, cleared by the next update taken whole.
    pub last_error: Option<LastError>,
    /// Refused updates and source failures so far (a failure repeated with no success in
    /// between counts once).
    pub failures: u64,
}

/// The last error a holder saw, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// What went wrong (the error's `Display` text).
    pub message: String,
    /// When it was first seen (a repeat of the same error does not move it).
    pub at: SystemTime,
}

/// What [`StatusRecorder::record_published`] returns: the new generation and its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication {
    /// The generation now serving.
    pub generation: u64,
    /// When it was published.
    pub at: SystemTime,
}

/// Keeps a holder's [`RotationStatus`]; thread-safe, embedded in each holder.
///
/// The holder calls [`record_published`](Self::record_published) when it swaps in new
/// material and [`record_failure`](Self::record_failure) when it refuses an update. A
/// failure is logged (`tracing` warn) and counted once: the same error again, with no
/// success in between (a watcher retrying a certificate that is not valid yet, a secrets
/// manager pushing the same bad bundle every minute) is neither logged nor counted again.
///
/// `E` is the holder's error type, kept whole so the holder can also report it typed.
///
/// ```
/// use zt_rotate::StatusRecorder;
///
/// let status: StatusRecorder<String> = StatusRecorder::new("example material");
/// assert_eq!(status.snapshot().generation, 0);
/// assert_eq!(status.record_published().generation, 1);
/// assert!(status.record_failure("bad signature".to_owned()));
/// assert!(!status.record_failure("bad signature".to_owned()), "a repeat is not new");
/// let snap = status.snapshot();
/// assert_eq!((snap.generation, snap.failures), (1, 1));
/// assert_eq!(snap.last_error.unwrap().message, "bad signature");
/// status.record_published();
/// assert!(status.snapshot().last_error.is_none());
/// ```
pub struct StatusRecorder<E = String> {
    what: &'static str,
    inner: Mutex<Inner<E>>,
}

struct Inner<E> {
    generation: u64,
    loaded_at: Option<SystemTime>,
    last_success: Option<SystemTime>,
    last_error: Option<(E, String, SystemTime)>,
    failures: u64,
}

impl<E> fmt::Debug for StatusRecorder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusRecorder")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<E: Clone + fmt::Display> StatusRecorder<E> {
    /// A recorder with nothing loaded yet (generation 0). `what` names the material in logs
    /// (`"server TLS material"`, `"policy"`, `"JWKS of https://issuer"`).
    pub fn new(what: &'static str) -> Self {
        StatusRecorder {
            what,
            inner: Mutex::new(Inner {
                generation: 0,
                loaded_at: None,
                last_success: None,
                last_error: None,
                failures: 0,
            }),
        }
    }

    /// A recorder whose first material was loaded just now (generation 1), for holders built
    /// from valid material.
    pub fn loaded(what: &'static str) -> Self {
        let this = Self::new(what);
        this.record_published();
        this
    }

    fn lock(&self) -> MutexGuard<'_, Inner<E>> {
        // The state is plain data, valid after any panic elsewhere.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New material was taken whole and now serves: bumps the generation and clears the
    /// last error. Call it *before* publishing (a reader that sees the new material then
    /// never sees the error it replaced).
    pub fn record_published(&self) -> Publication {
        let mut inner = self.lock();
        let at = SystemTime::now();
        inner.generation += 1;
        inner.loaded_at = Some(at);
        inner.last_success = Some(at);
        inner.last_error = None;
        Publication {
            generation: inner.generation,
            at,
        }
    }

    /// Part of a refused update was published anyway (the CA bundle and CRLs written with a
    /// refused certificate): bumps the generation but keeps the error that refused the rest.
    pub fn record_partial_publication(&self) -> Publication {
        let mut inner = self.lock();
        let at = SystemTime::now();
        inner.generation += 1;
        inner.loaded_at = Some(at);
        Publication {
            generation: inner.generation,
            at,
        }
    }

    /// An update was accepted but changed nothing that serves (the same keys fetched again):
    /// marks the success and clears the last error, without a new generation.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.last_success = Some(SystemTime::now());
        inner.last_error = None;
    }

    /// An update was refused or a source failed; the last good material keeps serving.
    /// Returns whether this is a new failure (then it was counted and logged) rather than a
    /// repeat of the last one.
    pub fn record_failure(&self, error: E) -> bool {
        let message = error.to_string();
        let mut inner = self.lock();
        if inner
            .last_error
            .as_ref()
            .is_some_and(|(_, last, _)| *last == message)
        {
            return false;
        }
        inner.failures += 1;
        tracing::warn!(
            material = self.what,
            error = %message,
            "update refused; the last good material keeps serving"
        );
        inner.last_error = Some((error, message, SystemTime::now()));
        true
    }

    /// The last error, typed, if the last update was refused.
    pub fn last_error(&self) -> Option<E> {
        self.lock().last_error.as_ref().map(|(e, _, _)| e.clone())
    }

    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The status now.
    pub fn snapshot(&self) -> RotationStatus {
        let inner = self.lock();
        RotationStatus {
            generation: inner.generation,
            loaded_at: inner.loaded_at,
            last_success: inner.last_success,
            last_error: inner.last_error.as_ref().map(|(_, message, at)| LastError {
                message: message.clone(),
                at: *at,
            }),
            failures: inner.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_publication_keeps_the_error_and_a_success_clears_it() {
        let status: StatusRecorder<String> = StatusRecorder::loaded("test");
        assert_eq!(status.generation(), 1);
        assert!(status.record_failure("not yet valid".into()));
        assert_eq!(status.record_partial_publication().generation, 2);
        let snap = status.snapshot();
        assert_eq!(snap.generation, 2);
        assert_eq!(snap.last_error.as_ref().unwrap().message, "not yet valid");
        assert_eq!(status.last_error().as_deref(), Some("not yet valid"));

        // Another error is a new failure; the first one again is too (it is no longer last).
        assert!(status.record_failure("bad key".into()));
        assert!(status.record_failure("not yet valid".into()));
        assert_eq!(status.snapshot().failures, 3);

        let before = status.snapshot().last_success.unwrap();
        status.record_success();
        let snap = status.snapshot();
        assert_eq!(snap.generation, 2, "a success without a publication");
        assert!(snap.last_error.is_none());
        assert!(snap.last_success.unwrap() >= before);
        // After a success, the same error counts again.
        assert!(status.record_failure("bad key".into()));
        assert_eq!(status.snapshot().failures, 4);
    }
}
