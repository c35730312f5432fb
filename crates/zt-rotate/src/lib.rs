//! One way to rotate key material.
//!
//! Certificates, CA bundles, CRLs, policy bundles and key sets all change while a service
//! runs. Every ztkit crate that holds such material does it the same way, with the parts
//! of this crate:
//!
//! - a **holder** per kind of material implements [`MaterialHolder`]: any source feeds it
//!   through [`MaterialHolder::update`], which validates, publishes atomically and keeps the
//!   last good material when the new one is refused;
//! - every holder reports one [`RotationStatus`] (generation, when loaded, last success,
//!   last error and when), kept by an embedded [`StatusRecorder`];
//! - **file watching** is written once: [`FileWatcher`] polls files and directories, waits
//!   for a change to settle, wakes early on inotify events (Linux) so a Kubernetes `..data`
//!   swap is seen before the next poll, and hands the loader exactly the bytes it judged
//!   settled ([`FileSnapshot`]); [`watch_files`] runs it into a holder, retrying refusals
//!   that depend on the clock with capped backoff;
//! - every background task is owned by a [`TaskHandle`] (`#[must_use]`): dropping it stops
//!   the task.
//!
//! The crate has no async runtime, tower or TLS dependency; the `tokio` feature lets a
//! [`TaskHandle`] own a tokio task. See `docs/rotation.md` for how each ztkit crate's
//! holders fit.
//!
//! ```
//! use std::sync::{Arc, RwLock};
//! use zt_rotate::{MaterialHolder, RotationStatus, StatusRecorder};
//!
//! /// Holds a list of allowed names; an empty list is refused.
//! struct AllowList {
//!     names: RwLock<Arc<Vec<String>>>, // a real holder publishes with arc_swap::ArcSwap
//!     status: StatusRecorder<String>,
//! }
//!
//! impl MaterialHolder for AllowList {
//!     type Material = Vec<String>;
//!     type Error = std::io::Error;
//!     fn update(&self, names: Vec<String>) -> Result<(), std::io::Error> {
//!         if names.is_empty() {
//!             let e = std::io::Error::other("the allow list is empty");
//!             self.source_failed(std::io::Error::other(e.to_string()));
//!             return Err(e);
//!         }
//!         self.status.record_published(); // before publishing: see StatusRecorder
//!         *self.names.write().unwrap() = Arc::new(names);
//!         Ok(())
//!     }
//!     fn source_failed(&self, error: std::io::Error) {
//!         self.status.record_failure(error.to_string());
//!     }
//!     fn status(&self) -> RotationStatus {
//!         self.status.snapshot()
//!     }
//! }
//!
//! let list = AllowList { names: Default::default(), status: StatusRecorder::new("allow list") };
//! list.update(vec!["alice".into()])?;
//! assert!(list.update(vec![]).is_err());
//! let status = list.status();
//! assert_eq!((status.generation, status.failures), (1, 1));
//! assert_eq!(list.names.read().unwrap().as_slice(), ["alice"]);
//! # Ok::<(), std::io::Error>(())
//! ```

pub use driver::{FileRotation, watch_files};
pub use error::Error;
pub use holder::MaterialHolder;
pub use status::{LastError, Publication, RotationStatus, StatusRecorder};
pub use task::{StopSignal, TaskHandle};
pub use watch::{
    DEFAULT_MAX_DIR_SIZE, DEFAULT_MAX_FILE_SIZE, DEFAULT_POLL_INTERVAL, DEFAULT_SETTLE, DirReader,
    FileSnapshot, FileWatcher, WatchEvent,
};

mod driver;
mod error;
mod holder;
mod status;
mod task;
mod watch;
