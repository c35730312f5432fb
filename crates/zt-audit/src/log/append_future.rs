//! [`AppendFuture`]: waiting asynchronously until an appended record is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Receipt;
use super::group_commit::Shared;
use crate::error::AuditError;

/// Resolves when a record appended with [`AuditLog::append_async`](crate::AuditLog::append_async) is durable; yields
/// what [`AuditLog::append`](crate::AuditLog::append) would have returned.
///
/// Dropping it before it resolves does not take the record back (it was written when
/// `append_async` was called): the background thread is asked to fsync it, as
/// [`AuditLog::submit`](crate::AuditLog::submit) does.
#[derive(Debug)]
#[must_use = "the record is written, but durability is only known by awaiting the future"]
pub struct AppendFuture {
    state: FutureState,
}

#[derive(Debug)]
enum FutureState {
    Ready(Option<Result<Receipt, AuditError>>),
    Waiting {
        shared: Arc<Shared>,
        ticket: u64,
        receipt: Option<Receipt>,
    },
}

impl AppendFuture {
    /// A future that is already resolved (no fsync to wait for, or the append failed).
    pub(super) fn ready(result: Result<Receipt, AuditError>) -> Self {
        AppendFuture {
            state: FutureState::Ready(Some(result)),
        }
    }

    /// A future resolving when the record written as `ticket` is durable.
    pub(super) fn waiting(shared: Arc<Shared>, ticket: u64, receipt: Receipt) -> Self {
        AppendFuture {
            state: FutureState::Waiting {
                shared,
                ticket,
                receipt: Some(receipt),
            },
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<Receipt, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            FutureState::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(AuditError::Closed))),
            FutureState::Waiting {
                shared,
                ticket,
                receipt,
            } => {
                let mut st = shared.lock();
                match st.resolve(*ticket) {
                    Some(r) => {
                        let receipt = receipt.take().ok_or(AuditError::Closed);
                        let out = receipt.and_then(|rc| shared.settle(&mut st, r, rc));
                        Poll::Ready(out)
                    }
                    None => {
                        st.wakers.insert(*ticket, cx.waker().clone());
                        shared.request_sync(&mut st);
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl Drop for AppendFuture {
    fn drop(&mut self) {
        if let FutureState::Waiting {
            shared,
            ticket,
            receipt: Some(_),
        } = &self.state
        {
            let mut st = shared.lock();
            st.wakers.remove(ticket);
            if st.resolve(*ticket).is_none() {
                shared.request_sync(&mut st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use crate::{AuditLog, Durability, Record};

    use super::*;

    fn poll_once(f: &mut AppendFuture) -> Poll<Result<Receipt, AuditError>> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn resolves_with_the_receipt_once_the_record_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::builder(dir.path()).open().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let receipt = rt.block_on(log.append_async(Record::new("t"))).unwrap();
        assert_eq!(receipt.seq(), Some(1));
        assert!(log.stats().durable_seq >= 1);
    }

    #[test]
    fn without_an_fsync_to_wait_for_it_is_ready_at_the_first_poll() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::builder(dir.path())
            .durability(Durability::None)
            .open()
            .unwrap();
        let mut f = log.append_async(Record::new("t"));
        match poll_once(&mut f) {
            Poll::Ready(Ok(receipt)) => assert_eq!(receipt.seq(), Some(1)),
            other => panic!("expected a ready receipt, got {other:?}"),
        }
        // Polled again after resolving, it fails instead of panicking.
        assert!(matches!(
            poll_once(&mut f),
            Poll::Ready(Err(AuditError::Closed))
        ));
        assert_eq!(log.stats().fsyncs, 0);
    }

    #[test]
    fn a_future_dropped_before_it_resolves_still_gets_its_record_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::builder(dir.path()).open().unwrap();
        let f = log.append_async(Record::new("t"));
        drop(f);
        assert!(log.wait_durable(1, Duration::from_secs(10)));
    }
}
