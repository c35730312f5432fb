//! Capturing what code under test logs with `tracing`.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// A writer appending to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with a subscriber capturing WARN and above on this thread, without colours;
/// returns what was logged, one event a line.
///
/// ```
/// let logs = ztkit_test_support::capture_warnings(|| {
///     tracing::info!("not captured");
///     tracing::warn!(serial = "01", "refused");
/// });
/// assert!(logs.contains("WARN") && logs.contains("refused") && logs.contains("serial=\"01\""));
/// assert!(!logs.contains("not captured"));
/// ```
pub fn capture_warnings(f: impl FnOnce()) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = out.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}
