//! Policy for a fleet (feature `remote`): bundles downloaded from a bundle server and decision
//! logs uploaded to a log service, as OPA does both.
//!
//! - [`BundleDownloader`] polls a bundle server (`ETag` / `If-None-Match`, jittered
//!   intervals, optional long polling), verifies signed bundles before anything else, and
//!   activates a bundle through the engine's [`MaterialHolder`](crate::MaterialHolder) seam
//!   only once its own tests pass; the last good set keeps deciding otherwise.
//! - [`LogUploader`] ships decision-log records (it is a [`DecisionLogSink`](crate::DecisionLogSink))
//!   and, the same way, zt-audit lines with their chain positions: gzip-compressed JSON
//!   arrays, batched by size and time, retried with backoff, from a bounded buffer that
//!   counts what it drops.
//! - [`BundleStatus`] and [`UploadStatus`] are public so health endpoints and metrics can
//!   report them.
//!
//! Both share one small HTTP/1.1 client (hyper, rustls with aws-lc-rs, one connection per
//! exchange, a deadline over the whole exchange, a streamed size limit, no redirects,
//! `https` only unless `allow_insecure_http`). See `docs/fleet.md` for the mapping to OPA's
//! configuration keys.

mod download;
mod service;
mod upload;

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

pub use download::{
    BundleDownloader, BundleDownloaderBuilder, BundleStatus, DownloadOutcome,
    LONG_POLLING_MEDIA_TYPE,
};
pub use service::{Service, ServiceBuilder};
pub use upload::{LogUploader, LogUploaderBuilder, UploadError, UploadStatus};

/// A range of waits (OPA's `min_delay_seconds` / `max_delay_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delays {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Delays {
    /// `min..max`, swapped when given the wrong way round.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Delays {
            min: min.min(max),
            max: max.max(min),
        }
    }
}

/// A random duration in `[min, max]`. The randomness is std's per-process hash seed mixed
/// with a per-call counter: enough to spread a fleet's polls, with no dependency.
pub(crate) fn jittered(min: Duration, max: Duration) -> Duration {
    let span = max.saturating_sub(min);
    if span.is_zero() {
        return min;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    min + span.mul_f64(fraction)
}
