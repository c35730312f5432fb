//! Refused handshakes: their log lines and (feature `audit`) audit records, both
//! rate-limited.
//!
//! Log lines: at most [`LOG_LINES_PER_SECOND`] a second after a burst of [`LOG_BURST`];
//! the accept loop reports how many were left out.
//!
//! Each refusal becomes one `tls.handshake` record while the token bucket has tokens
//! (`per_second` tokens a second, up to `burst`). Beyond that, refusals are only counted;
//! at the next tick of the accept loop (every second) the count goes into one summary
//! record. So a flood of bad handshakes writes at most `burst + per_second × seconds`
//! individual records and one summary a second, and every refusal is in the log, alone or
//! in a count.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use mtls_verify::RefusedCertificate;
use tokio::time::Instant;

/// Per-connection log lines (refusals, timeouts) allowed a second…
pub(super) const LOG_LINES_PER_SECOND: u32 = 20;
/// …after a burst of this many.
pub(super) const LOG_BURST: u32 = 200;

/// A token bucket: `per_second` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub(super) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(super) fn new(per_second: u32, burst: u32) -> Self {
        TokenBucket {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The rate limit of per-connection log lines, and the count of those it left out.
#[derive(Debug)]
pub(super) struct LogLimit {
    state: Mutex<(TokenBucket, u64)>,
}

impl LogLimit {
    pub(super) fn new() -> Self {
        LogLimit {
            state: Mutex::new((TokenBucket::new(LOG_LINES_PER_SECOND, LOG_BURST), 0)),
        }
    }

    /// Whether a line may be written now; if not, it is counted.
    pub(super) fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let allowed = state.0.take();
        if !allowed {
            state.1 += 1;
        }
        allowed
    }

    /// Lines left out since the last call.
    pub(super) fn take_suppressed(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner).1)
    }
}

/// What kind of refusal; the `refusal` field of the audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefusalKind {
    /// Shed to admit a newer connection.
    Shed,
    /// No first byte, or no complete handshake, in time.
    Timeout,
    /// Not TLS, no common parameters, no client certificate, an alert from the client.
    Tls,
    /// The presented client certificate was refused by the verifier.
    Certificate,
    /// The identity was refused after the handshake (a resumed session re-verified).
    Identity,
}

impl RefusalKind {
    #[cfg(feature = "audit")]
    const ALL: [RefusalKind; 5] = [
        RefusalKind::Shed,
        RefusalKind::Timeout,
        RefusalKind::Tls,
        RefusalKind::Certificate,
        RefusalKind::Identity,
    ];

    #[cfg(feature = "audit")]
    fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Shed => "shed",
            RefusalKind::Timeout => "timeout",
            RefusalKind::Tls => "tls",
            RefusalKind::Certificate => "certificate",
            RefusalKind::Identity => "identity",
        }
    }
}

/// One refused handshake. Without the `audit` feature only its kind is kept (it is counted);
/// the rest exists for the audit record.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) kind: RefusalKind,
    #[cfg(feature = "audit")]
    pub(super) remote_addr: SocketAddr,
    #[cfg(feature = "audit")]
    pub(super) reason: Cow<'static, str>,
    /// The client certificate, when the refusal came from verifying it.
    #[cfg(feature = "audit")]
    pub(super) certificate: Option<RefusedCertificate>,
}

impl Refusal {
    pub(super) fn new(
        kind: RefusalKind,
        remote_addr: SocketAddr,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        #[cfg(not(feature = "audit"))]
        let _ = (remote_addr, reason);
        Refusal {
            kind,
            #[cfg(feature = "audit")]
            remote_addr,
            #[cfg(feature = "audit")]
            reason: reason.into(),
            #[cfg(feature = "audit")]
            certificate: None,
        }
    }

    /// The certificate the client presented, when verifying it is what failed.
    pub(super) fn with_certificate(self, certificate: Option<RefusedCertificate>) -> Self {
        #[cfg(feature = "audit")]
        return Refusal {
            certificate,
            ..self
        };
        #[cfg(not(feature = "audit"))]
        {
            let _ = certificate;
            self
        }
    }
}

#[cfg(feature = "audit")]
pub(super) use audit::{AuditRate, RefusalAudit};

#[cfg(feature = "audit")]
mod audit {
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use serde_json::{Map, Value};
    use tokio::time::Instant;
    use zt_audit::{AuditLog, Record};

    use super::{Refusal, RefusalKind, TokenBucket};
    use crate::acceptor::stats::Counters;

    /// The audit rate limit: `per_second` records a second, bursts of up to `burst`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(in crate::acceptor) struct AuditRate {
        pub(in crate::acceptor) per_second: u32,
        pub(in crate::acceptor) burst: u32,
    }

    /// Writes refusals into an audit log under the rate limit.
    #[derive(Debug)]
    pub(in crate::acceptor) struct RefusalAudit {
        log: AuditLog,
        rate: AuditRate,
        /// The listener's address, the `resource` of every record.
        local_addr: String,
        counters: Arc<Counters>,
        bucket: Mutex<Bucket>,
    }

    #[derive(Debug)]
    struct Bucket {
        tokens: TokenBucket,
        /// Refusals not written since the last summary, by kind (`RefusalKind::ALL` order).
        suppressed: [u64; RefusalKind::ALL.len()],
        suppressed_since: Option<Instant>,
    }

    impl Bucket {
        fn take_summary(&mut self) -> Option<([u64; RefusalKind::ALL.len()], Duration)> {
            let since = self.suppressed_since.take()?;
            Some((std::mem::take(&mut self.suppressed), since.elapsed()))
        }
    }

    impl RefusalAudit {
        pub(in crate::acceptor) fn new(
            log: AuditLog,
            rate: AuditRate,
            local_addr: String,
            counters: Arc<Counters>,
        ) -> Self {
            RefusalAudit {
                log,
                rate,
                local_addr,
                counters,
                bucket: Mutex::new(Bucket {
                    tokens: TokenBucket::new(rate.per_second, rate.burst),
                    suppressed: [0; RefusalKind::ALL.len()],
                    suppressed_since: None,
                }),
            }
        }

        /// Records one refusal, or counts it when over the rate.
        pub(in crate::acceptor) fn record(&self, refusal: &Refusal) {
            {
                let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
                if !bucket.tokens.take() {
                    let slot = RefusalKind::ALL
                        .iter()
                        .position(|k| *k == refusal.kind)
                        .unwrap_or(0);
                    bucket.suppressed[slot] += 1;
                    bucket.suppressed_since.get_or_insert_with(Instant::now);
                    Counters::bump(&self.counters.audit_suppressed);
                    return;
                }
            }
            self.write(self.refusal_record(refusal));
        }

        /// Writes the summary of what was suppressed, if anything was (called every second).
        pub(in crate::acceptor) fn flush(&self) {
            let summary = self
                .bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_summary();
            if let Some((counts, period)) = summary {
                self.write(self.summary_record(counts, period));
            }
        }

        fn refusal_record(&self, refusal: &Refusal) -> Record {
            let cert = refusal.certificate.as_ref();
            let mut record = Record::new("tls.handshake")
                .subject(cert.and_then(|c| c.subject()).unwrap_or("anonymous"))
                .action("handshake")
                .resource(self.local_addr.clone())
                .decision("deny")
                .reason(refusal.reason.as_ref())
                .field("refusal", refusal.kind.as_str())
                .field("peer", refusal.remote_addr.to_string());
            if let Some(cert) = cert {
                if let Some(serial) = cert.serial_hex() {
                    record = record.field("cert_serial", serial);
                }
                record = record.field("cert_fingerprint_sha256", cert.fingerprint_sha256_hex());
            }
            record
        }

        fn summary_record(
            &self,
            counts: [u64; RefusalKind::ALL.len()],
            period: Duration,
        ) -> Record {
            let total: u64 = counts.iter().sum();
            let by_kind: Map<String, Value> = RefusalKind::ALL
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.as_str().to_owned(), Value::from(n)))
                .collect();
            Record::new("tls.handshake")
                .action("handshake")
                .resource(self.local_addr.clone())
                .decision("deny")
                .reason(format!(
                    "rate limited: {total} refused handshakes not recorded one by one \
                     (limit {} a second, bursts of {})",
                    self.rate.per_second, self.rate.burst
                ))
                .field("suppressed", total)
                .field("suppressed_by_refusal", Value::Object(by_kind))
                .field("period_ms", period.as_millis() as u64)
        }

        /// Appends now (the `write(2)` happens in this call); a task waits for durability
        /// only to report a failure.
        fn write(&self, record: Record) {
            Counters::bump(&self.counters.audit_records);
            let append = self.log.append_async(record);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(err) = append.await {
                            tracing::error!(error = %err, "audit record of a refused TLS handshake could not be written");
                        }
                    });
                }
                // Shutting down: written, and fsynced when the log closes.
                Err(_) => drop(append),
            }
        }
    }

    impl Drop for RefusalAudit {
        fn drop(&mut self) {
            self.flush();
        }
    }
}
