//! The one trait every holder of rotating material implements.

use crate::RotationStatus;

/// A holder of material that rotates: TLS material, a policy set, a key set.
///
/// Every source feeds a holder through this trait: the file watcher of this crate, a SPIFFE
/// Workload API stream, a JWKS endpoint, a bundle server, or your own. The holder
///
/// 1. validates the new material completely (parse, check, build whatever handshakes or
///    requests will use),
/// 2. publishes it atomically (an `ArcSwap` store; hot paths only load an `Arc`), and
/// 3. on any error keeps the last good material serving, and counts and logs the refusal
///    in its [`RotationStatus`] (a [`StatusRecorder`](crate::StatusRecorder) does that).
///
/// Material equal to what already serves is accepted without a new generation.
///
/// # A source of your own
///
/// Material kept in a secrets manager, pushed into a holder by a task that the
/// [`TaskHandle`](crate::TaskHandle) owns (dropping the handle stops the loop):
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use api_keys::{ApiKeys, KeysError};
/// use zt_rotate::{MaterialHolder, TaskHandle};
///
/// /// Stands in for a secrets manager's client.
/// struct SecretsManager;
/// impl SecretsManager {
///     fn fetch(&self, _name: &str) -> Result<String, String> {
///         Ok("key-2026-11".to_owned())
///     }
/// }
///
/// let keys = Arc::new(ApiKeys::new("key-2026-10"));
/// let holder = Arc::clone(&keys);
/// let handle = TaskHandle::spawn_thread("secrets-refresh", move |stop| {
///     let client = SecretsManager;
///     loop {
///         match client.fetch("api-keys") {
///             // Validated and published by the holder, or refused and counted.
///             Ok(material) => { let _ = holder.update(material); }
///             // The source failed: the last good keys keep serving.
///             Err(e) => holder.source_failed(KeysError(e)),
///         }
///         if stop.wait(Duration::from_secs(300)) {
///             return;
///         }
///     }
/// })?;
///
/// // A test (or a health check) waits on the generation, not on time.
/// let deadline = std::time::Instant::now() + Duration::from_secs(10);
/// while keys.status().generation < 2 {
///     assert!(std::time::Instant::now() < deadline, "not refreshed");
///     std::thread::sleep(Duration::from_millis(5));
/// }
/// assert_eq!(&*keys.current(), "key-2026-11");
/// assert!(keys.update(String::new()).is_err(), "refused: the last good key stays");
/// assert_eq!(&*keys.current(), "key-2026-11");
/// assert_eq!(keys.status().failures, 1);
/// handle.stop();
///
/// // The holder: validate, publish atomically, keep the last good value.
/// mod api_keys {
///     use std::sync::{Arc, RwLock};
///     use zt_rotate::{MaterialHolder, RotationStatus, StatusRecorder};
///
///     #[derive(Debug, Clone)]
///     pub struct KeysError(pub String);
///     impl std::fmt::Display for KeysError {
///         fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///             f.write_str(&self.0)
///         }
///     }
///     impl std::error::Error for KeysError {}
///
///     pub struct ApiKeys {
///         // A real holder publishes through `arc_swap::ArcSwap`; a lock keeps this short.
///         current: RwLock<Arc<str>>,
///         status: StatusRecorder<KeysError>,
///     }
///
///     impl ApiKeys {
///         pub fn new(first: &str) -> Self {
///             ApiKeys { current: RwLock::new(first.into()), status: StatusRecorder::loaded("API keys") }
///         }
///         pub fn current(&self) -> Arc<str> {
///             self.current.read().unwrap().clone()
///         }
///     }
///
///     impl MaterialHolder for ApiKeys {
///         type Material = String;
///         type Error = KeysError;
///
///         fn update(&self, material: String) -> Result<(), KeysError> {
///             if material.is_empty() {
///                 let e = KeysError("empty key".into());
///                 self.status.record_failure(e.clone());
///                 return Err(e);
///             }
///             if *self.current() == *material {
///                 return Ok(());
///             }
///             self.status.record_published();
///             *self.current.write().unwrap() = material.into();
///             Ok(())
///         }
///
///         fn source_failed(&self, error: KeysError) {
///             self.status.record_failure(error);
///         }
///
///         fn status(&self) -> RotationStatus {
///             self.status.snapshot()
///         }
///     }
/// }
/// # Ok::<(), zt_rotate::Error>(())
/// ```
pub trait MaterialHolder: Send + Sync {
    /// What an update carries (PEM bytes, a bundle, a key set document).
    type Material;
    /// Why an update was refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Validates `material` and publishes it atomically; on error the last good material
    /// keeps serving, and the refusal is recorded in the status.
    ///
    /// # Errors
    /// Why the material was refused.
    fn update(&self, material: Self::Material) -> Result<(), Self::Error>;

    /// Records that a source could not produce material (a file unreadable, a fetch failed);
    /// the last good material keeps serving.
    fn source_failed(&self, error: Self::Error);

    /// How rotation went: generation, when loaded, last success, last error.
    fn status(&self) -> RotationStatus;

    /// Whether a refusal may turn into an acceptance of the same material as time passes
    /// (a certificate not valid yet, a CRL past its nextUpdate while a fresh one is on its
    /// way). A driver then retries the same material later, with capped backoff, without
    /// waiting for it to change. Default: no error is transient.
    fn is_transient(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}
