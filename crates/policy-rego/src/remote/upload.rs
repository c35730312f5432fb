//! [`LogUploader`]: decision-log records (and zt-audit lines) shipped to a log service in
//! OPA's decision-log upload format.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use zt_rotate::TaskHandle;

use super::Delays;
use super::service::{Service, remote_error};
use crate::error::{PolicyError, Result};
use crate::log::{DecisionLogRecord, DecisionLogSink};

/// Replies to an upload are not read beyond this many bytes.
const MAX_REPLY_BYTES: u64 = 64 << 10;

/// Builds a [`LogUploader`]; see [`LogUploader::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct LogUploaderBuilder {
    service: Service,
    resource: String,
    delays: Delays,
    batch_bytes: usize,
    buffer_bytes: usize,
}

impl LogUploaderBuilder {
    /// Uploads what is buffered every `min..max` (random; OPA's
    /// `reporting.min_delay_seconds` / `max_delay_seconds`, default 300 s and 600 s), and the
    /// full batches as soon as more than a batch is buffered. Failed uploads are retried with a backoff capped at
    /// `max`.
    pub fn reporting(mut self, min: Duration, max: Duration) -> Self {
        self.delays = Delays::new(min, max);
        self
    }

    /// The largest batch, in bytes of JSON before compression (OPA's
    /// `reporting.upload_size_limit_bytes`, which OPA counts after compression; default
    /// 32,768). A single event larger than this is dropped and counted.
    pub fn batch_size_limit_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(2);
        self
    }

    /// The most JSON kept waiting for upload, batches being retried included (OPA's
    /// `reporting.buffer_size_limit_bytes`; default 16 MiB). Events that do not fit are
    /// dropped and counted in [`UploadStatus::dropped_events`].
    pub fn buffer_size_limit_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
        self
    }

    /// Where on the service events go (OPA's `decision_logs.resource`; default `/logs`).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// The uploader.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Config`] when the service URL and the resource do not make a URL.
    pub fn build(self) -> Result<LogUploader> {
        let url = self.service.url(&self.resource)?;
        Ok(LogUploader {
            shared: Arc::new(Shared {
                service: self.service,
                url,
                delays: self.delays,
                batch_bytes: self.batch_bytes,
                buffer_bytes: self.buffer_bytes,
                queue: Mutex::new(Queue::default()),
                wake: tokio::sync::Notify::new(),
                pending: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// How uploads are going, for health endpoints and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadStatus {
    /// Where events go.
    pub url: String,
    /// Events waiting (a batch being retried included).
    pub buffered_events: usize,
    /// Their size, in bytes of JSON.
    pub buffered_bytes: usize,
    /// Events the service accepted.
    pub uploaded_events: u64,
    /// Batches the service accepted.
    pub uploaded_batches: u64,
    /// Events dropped: the buffer was full, or one event alone was larger than a batch.
    pub dropped_events: u64,
    /// Upload attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// When the service last accepted a batch.
    pub last_upload: Option<SystemTime>,
    /// The last failed attempt, cleared by the next accepted batch.
    pub last_error: Option<UploadError>,
}

/// A failed upload and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadError {
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Vec<u8>>,
    /// Bytes of `events` plus those of the batch in flight.
    held_bytes: usize,
    queued_bytes: usize,
    pending_events: usize,
    uploaded_events: u64,
    uploaded_batches: u64,
    dropped_events: u64,
    failed_attempts: u64,
    last_upload: Option<SystemTime>,
    last_error: Option<UploadError>,
}

/// One batch cut from the queue, kept whole across retries.
struct Batch {
    events: usize,
    raw_bytes: usize,
    gzipped: Bytes,
}

struct Shared {
    service: Service,
    url: url::Url,
    delays: Delays,
    batch_bytes: usize,
    buffer_bytes: usize,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    /// The batch being uploaded or waiting for a retry; also makes uploads one at a time.
    pending: tokio::sync::Mutex<Option<Batch>>,
}

/// Ships events to a log service the way OPA's decision-log plugin does (feature `remote`):
/// `POST` of a gzip-compressed JSON array of events (`Content-Encoding: gzip`,
/// `Content-Type: application/json`), batched by size and time, retried with backoff.
///
/// - As a [`DecisionLogSink`] (give it to
///   [`DecisionLogConfig::new`](crate::DecisionLogConfig::new)) it queues each
///   [`DecisionLogRecord`] serialized in OPA's event format (`decision_id`, `path`, `input`,
///   `result`, `timestamp`, `labels`, `bundles`, `revision`, `metrics`, …). Queuing never
///   blocks on the network: it takes a lock, appends bytes and may wake the task.
/// - [`push_audit_line`](Self::push_audit_line) queues a zt-audit line with its chain
///   position (`seq`, `prev_hash`, `hash`) and the line itself, byte for byte, so a central
///   store can verify each instance's chain (see `docs/fleet.md`).
/// - The buffer is bounded ([`LogUploaderBuilder::buffer_size_limit_bytes`]); what does
///   not fit is dropped and counted, never blocking the request path.
///
/// ```no_run
/// use policy_rego::{DecisionLogConfig, LogUploader, PolicyEngine, PolicyOptions, Service};
///
/// # async fn run() -> Result<(), policy_rego::PolicyError> {
/// let service = Service::builder("https://logs.example.com").bearer_token("t").build()?;
/// let uploader = LogUploader::builder(&service).build()?;
/// let engine = PolicyEngine::builder(PolicyOptions::new())
///     .decision_log(DecisionLogConfig::new(uploader.clone()).label("app", "orders"))
///     .load("/etc/ztkit/policy")?;
/// let task = uploader.spawn(); // uploads until dropped
/// # let _ = engine;
/// // At shutdown: stop the task, then upload what is left.
/// drop(task);
/// uploader.flush().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LogUploader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogUploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogUploader")
            .field("url", &self.shared.url.as_str())
            .finish_non_exhaustive()
    }
}

impl DecisionLogSink for LogUploader {
    fn log(&self, record: DecisionLogRecord) {
        match serde_json::to_vec(&record) {
            Ok(event) => {
                self.push_event(event);
            }
            Err(_) => self.shared.queue().dropped_events += 1,
        }
    }
}

#[derive(Deserialize)]
struct ChainPosition {
    seq: u64,
    prev_hash: String,
    hash: String,
}

#[derive(Serialize)]
struct AuditEvent<'a> {
    seq: u64,
    prev_hash: &'a str,
    hash: &'a str,
    line: &'a str,
}

impl LogUploader {
    /// An uploader to `service` (OPA's `decision_logs.service`), resource `/logs`, with
    /// OPA's default delays (300–600 s) and batch size (32 KiB).
    pub fn builder(service: &Service) -> LogUploaderBuilder {
        LogUploaderBuilder {
            service: service.clone(),
            resource: "/logs".to_owned(),
            delays: Delays::new(Duration::from_secs(300), Duration::from_secs(600)),
            batch_bytes: 32 << 10,
            buffer_bytes: 16 << 20,
        }
    }

    /// Queues one event given as serialized JSON (an object). Returns whether it was kept
    /// (`false`: dropped and counted, the buffer being full or the event larger than a
    /// batch).
    pub fn push_event(&self, event: Vec<u8>) -> bool {
        let shared = &self.shared;
        let mut queue = shared.queue();
        // A batch is `[` + events joined by `,` + `]`.
        if event.len() + 2 > shared.batch_bytes
            || queue.held_bytes + event.len() > shared.buffer_bytes
        {
            queue.dropped_events += 1;
            return false;
        }
        queue.held_bytes += event.len();
        queue.queued_bytes += event.len() + 1;
        queue.events.push_back(event);
        let full = queue.queued_bytes + 1 > shared.batch_bytes;
        drop(queue);
        if full {
            shared.wake.notify_one();
        }
        true
    }

    /// Queues one line of a zt-audit log (with or without its newline) as the event
    /// `{"seq": N, "prev_hash": "…", "hash": "…", "line": "<the line>"}`. The line travels as
    /// a JSON string, so the receiver gets its exact bytes back and can recompute the hash.
    /// Returns whether it was kept (see [`push_event`](Self::push_event)).
    ///
    /// # Errors
    ///
    /// [`PolicyError::Input`] when the line is not UTF-8 JSON with `seq`, `prev_hash` and
    /// `hash`.
    pub fn push_audit_line(&self, line: &[u8]) -> Result<bool> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let text = std::str::from_utf8(line)
            .map_err(|_| PolicyError::Input("audit line is not UTF-8".into()))?;
        let position: ChainPosition = serde_json::from_str(text)
            .map_err(|e| PolicyError::Input(format!("audit line: {e}")))?;
        let event = serde_json::to_vec(&AuditEvent {
            seq: position.seq,
            prev_hash: &position.prev_hash,
            hash: &position.hash,
            line: text,
        })
        .map_err(|e| PolicyError::Input(format!("audit line: {e}")))?;
        Ok(self.push_event(event))
    }

    /// Uploads everything buffered now, batch by batch (at shutdown, or from a scheduler
    /// of your own), and returns how many events the service accepted.
    ///
    /// # Errors
    ///
    /// The first failed upload; that batch stays buffered for the next attempt.
    pub async fn flush(&self) -> Result<usize> {
        let mut sent = 0;
        while let Some(events) = self.upload_one(false).await? {
            sent += events;
        }
        Ok(sent)
    }

    /// Uploads in a tokio task until the handle is dropped or stopped: everything every
    /// `min..max`, and the full batches at once when more than a batch is buffered.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(&self) -> TaskHandle {
        let this = self.clone();
        TaskHandle::from_tokio(tokio::spawn(async move { this.run().await }))
    }

    /// How uploads are going.
    pub fn status(&self) -> UploadStatus {
        let queue = self.shared.queue();
        UploadStatus {
            url: self.shared.url.as_str().to_owned(),
            buffered_events: queue.events.len() + queue.pending_events,
            buffered_bytes: queue.held_bytes,
            uploaded_events: queue.uploaded_events,
            uploaded_batches: queue.uploaded_batches,
            dropped_events: queue.dropped_events,
            failed_attempts: queue.failed_attempts,
            last_upload: queue.last_upload,
            last_error: queue.last_error.clone(),
        }
    }

    async fn run(self) {
        let shared = &self.shared;
        let mut tick = tokio::time::Instant::now() + shared.delays.next();
        loop {
            // The timer uploads everything; a wake-up for a full batch uploads full batches
            // only, and the rest keeps waiting for the timer.
            let everything = tokio::select! {
                () = tokio::time::sleep_until(tick) => true,
                () = shared.wake.notified() => false,
            };
            if everything {
                tick = tokio::time::Instant::now() + shared.delays.next();
            }
            let mut failures = 0u32;
            loop {
                match self.upload_one(!everything).await {
                    Ok(Some(_)) => failures = 0,
                    Ok(None) => break,
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(shared.delays.retry(failures)).await;
                    }
                }
            }
        }
    }

    /// Uploads the batch waiting for a retry, else cuts the next one from the queue (only
    /// when a full one is buffered, with `full_only`). `Ok(None)`: nothing to upload.
    async fn upload_one(&self, full_only: bool) -> Result<Option<usize>> {
        let shared = &self.shared;
        let mut pending = shared.pending.lock().await;
        if pending.is_none() {
            // `queued_bytes` counts a comma per event: plus the brackets, less one comma, is
            // the size of a batch of all of them. More than a batch buffered: the first batch
            // is full (its next event did not fit).
            let full = shared.queue().queued_bytes + 1 > shared.batch_bytes;
            if full_only && !full {
                return Ok(None);
            }
            *pending = self.cut_batch();
        }
        let Some(batch) = pending.as_ref() else {
            return Ok(None);
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let url = &shared.url;
        let reply = shared
            .service
            .exchange(
                Method::POST,
                url,
                headers,
                batch.gzipped.clone(),
                shared.service.timeout,
                MAX_REPLY_BYTES,
            )
            .await
            .and_then(|reply| {
                if reply.status.is_success() {
                    Ok(())
                } else {
                    Err(remote_error(url, format!("status {}", reply.status)))
                }
            });
        let mut queue = shared.queue();
        match reply {
            Ok(()) => {
                let events = batch.events;
                queue.held_bytes -= batch.raw_bytes;
                queue.pending_events = 0;
                queue.uploaded_events += events as u64;
                queue.uploaded_batches += 1;
                queue.last_upload = Some(SystemTime::now());
                queue.last_error = None;
                *pending = None;
                Ok(Some(events))
            }
            Err(error) => {
                queue.failed_attempts += 1;
                if queue.last_error.is_none() {
                    tracing::warn!(%error, "decision log upload failed; the batch is kept for a retry");
                }
                queue.last_error = Some(UploadError {
                    message: error.to_string(),
                    at: SystemTime::now(),
                });
                Err(error)
            }
        }
    }

    /// Takes events from the front of the queue while they fit in one batch, and compresses
    /// them as one JSON array.
    fn cut_batch(&self) -> Option<Batch> {
        let shared = &self.shared;
        let mut queue = shared.queue();
        let mut json = Vec::with_capacity(shared.batch_bytes.min(queue.queued_bytes + 2));
        json.push(b'[');
        let mut events = 0;
        let mut raw_bytes = 0;
        while let Some(next) = queue.events.front() {
            let separator = usize::from(events > 0);
            if events > 0 && json.len() + separator + next.len() + 1 > shared.batch_bytes {
                break;
            }
            let Some(event) = queue.events.pop_front() else {
                break;
            };
            if separator == 1 {
                json.push(b',');
            }
            json.extend_from_slice(&event);
            raw_bytes += event.len();
            queue.queued_bytes -= event.len() + 1;
            events += 1;
        }
        if events == 0 {
            return None;
        }
        json.push(b']');
        queue.pending_events = events;
        drop(queue);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&json);
        let gzipped = gz.finish().unwrap_or_default();
        Some(Batch {
            events,
            raw_bytes,
            gzipped: Bytes::from(gzipped),
        })
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploader(batch: usize, buffer: usize) -> LogUploader {
        let service = Service::builder("http://127.0.0.1:9")
            .allow_insecure_http()
            .build()
            .unwrap();
        LogUploader::builder(&service)
            .batch_size_limit_bytes(batch)
            .buffer_size_limit_bytes(buffer)
            .build()
            .unwrap()
    }

    fn gunzip(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_reader(flate2::read::GzDecoder::new(bytes)).unwrap()
    }

    #[test]
    fn batches_are_json_arrays_within_the_size_limit() {
        let up = uploader(43, 1000);
        for i in 0..5 {
            assert!(up.push_event(format!(r#"{{"n":{i},"pad":"xxxx"}}"#).into_bytes()));
        }
        // Each event is 20 bytes: two fit in 43 with the brackets and the comma.
        let first = up.cut_batch().unwrap();
        assert_eq!(first.events, 2);
        assert_eq!(
            gunzip(&first.gzipped),
            serde_json::json!([{"n": 0, "pad": "xxxx"}, {"n": 1, "pad": "xxxx"}])
        );
        assert_eq!(
            up.status().buffered_events,
            5,
            "the batch in flight still counts"
        );
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let up = uploader(1000, 50);
        let event = br#"{"pad":"xxxxxxxxxxxxxx"}"#.to_vec(); // 24 bytes
        assert!(up.push_event(event.clone()));
        assert!(up.push_event(event.clone()));
        assert!(!up.push_event(event.clone()));
        assert!(!up.push_event(vec![b' '; 999]), "larger than a batch");
        let status = up.status();
        assert_eq!((status.buffered_events, status.dropped_events), (2, 2));
    }

    #[test]
    fn audit_lines_keep_their_bytes_and_chain_position() {
        let up = uploader(1000, 1000);
        let line = format!(
            "{{\"seq\":7,\"ts\":\"t\",\"kind\":\"x\",\"prev_hash\":\"{}\",\"hash\":\"{}\"}}\n",
            "0".repeat(64),
            "a".repeat(64)
        );
        assert!(up.push_audit_line(line.as_bytes()).unwrap());
        assert!(up.push_audit_line(b"{\"seq\":1}").is_err());
        assert!(up.push_audit_line(&[0xff]).is_err());
        let batch = gunzip(&up.cut_batch().unwrap().gzipped);
        assert_eq!(batch[0]["seq"], 7);
        assert_eq!(batch[0]["hash"], "a".repeat(64));
        assert_eq!(batch[0]["line"].as_str().unwrap(), line.trim_end());
    }
}
