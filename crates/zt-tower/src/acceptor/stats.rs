//! Counters of a [`TlsListener`](super::TlsListener), readable while it serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Shared;
use super::pending::Shed;

/// The live counters, shared by the accept loop and the connection tasks.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) shed_awaiting_hello: AtomicU64,
    pub(super) shed_handshaking: AtomicU64,
    pub(super) shed_per_address: AtomicU64,
    pub(super) shed_per_subnet: AtomicU64,
    pub(super) shed_fd_limit: AtomicU64,
    pub(super) first_byte_timeouts: AtomicU64,
    pub(super) handshake_timeouts: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) closed_by_client: AtomicU64,
    pub(super) accept_errors: AtomicU64,
    pub(super) audit_records: AtomicU64,
    pub(super) audit_suppressed: AtomicU64,
}

impl Counters {
    pub(super) fn shed(&self, why: Shed) -> &AtomicU64 {
        match why {
            Shed::AwaitingHello => &self.shed_awaiting_hello,
            Shed::Handshaking => &self.shed_handshaking,
            Shed::Address => &self.shed_per_address,
            Shed::Subnet => &self.shed_per_subnet,
            Shed::FdLimit => &self.shed_fd_limit,
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a [`TlsListener`](super::TlsListener) has done since it started: a snapshot from
/// [`TlsListener::stats`](super::TlsListener::stats) or [`AcceptorStatsHandle::get`].
///
/// Every accepted connection ends up in exactly one of: `handshakes_completed`, one of the
/// `shed_*` counters, `first_byte_timeouts`, `handshake_timeouts`, `refused`,
/// `closed_by_client` — or is still `awaiting_client_hello` or `handshaking`.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptorStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Handshakes that completed with a verified (or, when optional, absent) identity.
    pub handshakes_completed: u64,
    /// Connections accepted whose ClientHello is not complete yet, now.
    pub awaiting_client_hello: u64,
    /// Handshakes past their ClientHello, now.
    pub handshaking: u64,
    /// Connections awaiting their ClientHello closed to admit a new connection at the
    /// limit ([`max_awaiting_client_hello`](super::TlsListenerOptions::max_awaiting_client_hello)).
    pub shed_awaiting_client_hello: u64,
    /// Handshakes closed to admit one whose ClientHello just completed, at the limit
    /// ([`max_concurrent_handshakes`](super::TlsListenerOptions::max_concurrent_handshakes)).
    pub shed_handshaking: u64,
    /// … at the per-address limit
    /// ([`max_handshakes_per_address`](super::TlsListenerOptions::max_handshakes_per_address)).
    pub shed_per_address: u64,
    /// … at the per-/24 (IPv4) or per-/64 (IPv6) limit
    /// ([`max_handshakes_per_subnet`](super::TlsListenerOptions::max_handshakes_per_subnet)).
    pub shed_per_subnet: u64,
    /// … to free a file descriptor when accepting failed for want of one.
    pub shed_fd_limit: u64,
    /// Connections closed because no byte arrived within the
    /// [first-byte timeout](super::TlsListenerOptions::first_byte_timeout).
    pub first_byte_timeouts: u64,
    /// Handshakes closed at the whole handshake's timeout
    /// ([`ServerTls::handshake_timeout`](mtls_verify::ServerTls::handshake_timeout)).
    pub handshake_timeouts: u64,
    /// Handshakes refused: not TLS, no common parameters, no or a refused client
    /// certificate, an identity refused after a resumed handshake.
    pub refused: u64,
    /// Connections the client closed before its handshake completed.
    pub closed_by_client: u64,
    /// `accept` calls that failed (for example for want of file descriptors).
    pub accept_errors: u64,
    /// Audit records written about refused handshakes (summaries included).
    pub audit_records: u64,
    /// Refused handshakes that the audit rate limit left out of the audit log (each is
    /// counted in a summary record instead).
    pub audit_suppressed: u64,
}

impl AcceptorStats {
    /// All pending handshakes shed, whatever the limit.
    pub fn shed(&self) -> u64 {
        self.shed_awaiting_client_hello
            + self.shed_handshaking
            + self.shed_per_address
            + self.shed_per_subnet
            + self.shed_fd_limit
    }
}

/// A cheap, cloneable handle on a [`TlsListener`](super::TlsListener)'s counters that
/// outlives handing the listener to `axum::serve` or tonic.
#[derive(Clone, Debug)]
pub struct AcceptorStatsHandle {
    pub(super) shared: Arc<Shared>,
}

impl AcceptorStatsHandle {
    /// A snapshot of the counters.
    pub fn get(&self) -> AcceptorStats {
        self.shared.stats()
    }
}

pub(super) fn snapshot(counters: &Counters, waiting: usize, handshaking: usize) -> AcceptorStats {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    AcceptorStats {
        accepted: get(&counters.accepted),
        handshakes_completed: get(&counters.completed),
        awaiting_client_hello: waiting as u64,
        handshaking: handshaking as u64,
        shed_awaiting_client_hello: get(&counters.shed_awaiting_hello),
        shed_handshaking: get(&counters.shed_handshaking),
        shed_per_address: get(&counters.shed_per_address),
        shed_per_subnet: get(&counters.shed_per_subnet),
        shed_fd_limit: get(&counters.shed_fd_limit),
        first_byte_timeouts: get(&counters.first_byte_timeouts),
        handshake_timeouts: get(&counters.handshake_timeouts),
        refused: get(&counters.refused),
        closed_by_client: get(&counters.closed_by_client),
        accept_errors: get(&counters.accept_errors),
        audit_records: get(&counters.audit_records),
        audit_suppressed: get(&counters.audit_suppressed),
    }
}
