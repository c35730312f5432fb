//! A holder of one text for the tests: refuses text starting with "bad", and refuses text
//! starting with "later" as transient until `valid_later` is set.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zt_rotate::{MaterialHolder, RotationStatus, StatusRecorder};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("refused: {0}")]
    Bad(String),
    #[error("not valid yet: {0}")]
    NotYetValid(String),
    #[error("source: {0}")]
    Source(String),
}

impl From<zt_rotate::Error> for TextError {
    fn from(e: zt_rotate::Error) -> Self {
        TextError::Source(e.to_string())
    }
}

pub struct TextHolder {
    pub current: Mutex<Option<String>>,
    /// Every material `update` was given, in order.
    pub updates: Mutex<Vec<String>>,
    pub status: StatusRecorder<TextError>,
    pub valid_later: AtomicBool,
}

impl TextHolder {
    pub fn new() -> Arc<Self> {
        Arc::new(TextHolder {
            current: Mutex::new(None),
            updates: Mutex::new(Vec::new()),
            status: StatusRecorder::new("test text"),
            valid_later: AtomicBool::new(false),
        })
    }

    pub fn current(&self) -> Option<String> {
        self.current.lock().unwrap().clone()
    }

    pub fn updates(&self) -> Vec<String> {
        self.updates.lock().unwrap().clone()
    }
}

impl MaterialHolder for TextHolder {
    type Material = String;
    type Error = TextError;

    fn update(&self, text: String) -> Result<(), TextError> {
        self.updates.lock().unwrap().push(text.clone());
        let refusal = if text.starts_with("bad") {
            Some(TextError::Bad(text.clone()))
        } else if text.starts_with("later") && !self.valid_later.load(Ordering::SeqCst) {
            Some(TextError::NotYetValid(text.clone()))
        } else {
            None
        };
        if let Some(e) = refusal {
            self.status.record_failure(e.clone());
            return Err(e);
        }
        if self.current().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.status.record_published();
        *self.current.lock().unwrap() = Some(text);
        Ok(())
    }

    fn source_failed(&self, error: TextError) {
        self.status.record_failure(error);
    }

    fn status(&self) -> RotationStatus {
        self.status.snapshot()
    }

    fn is_transient(&self, error: &TextError) -> bool {
        matches!(error, TextError::NotYetValid(_))
    }
}

/// The loader of a one-file watcher: the file's text.
pub fn text_of(
    path: &Path,
) -> impl FnMut(&zt_rotate::FileSnapshot) -> Result<String, TextError> + Send + 'static {
    let path: PathBuf = path.to_owned();
    move |snapshot| {
        let bytes = snapshot
            .get(&path)
            .ok_or_else(|| TextError::Source("file missing from the snapshot".into()))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Waits for `cond`, failing the test after a generous deadline (a guard, not a clock the
/// test relies on).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
