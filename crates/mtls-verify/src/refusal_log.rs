//! A rate limit on the client-certificate verifier's `warn` lines, so a handshake flood of
//! bad certificates cannot flood the log.
//!
//! Time is cut into windows of one second. In a window, at most
//! [`REFUSAL_LINES_PER_WINDOW`] lines are written, except that the first refusal of each
//! reason not yet seen in the window is always written (up to [`MAX_REASONS_PER_WINDOW`]
//! reasons), so a new kind of problem is not hidden behind a flood of another. A reason is
//! its text with the digits left out (times, serials and positions vary within one kind).
//! Lines left out are counted; the first refusal after the window ends writes one
//! `suppressed K similar lines` summary before its own line, and so does dropping the
//! verifier (a reload builds a new one). So a window writes at most
//! `REFUSAL_LINES_PER_WINDOW + MAX_REASONS_PER_WINDOW` lines plus one summary, and every
//! refusal is in the log, alone or in a count.
//!
//! The clock is injected so that the tests move time without sleeping.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines written a window, whatever their reason…
pub(crate) const REFUSAL_LINES_PER_WINDOW: u32 = 10;
/// …plus the first line of each new reason, up to this many reasons a window.
pub(crate) const MAX_REASONS_PER_WINDOW: usize = 32;
/// The length of a window.
pub(crate) const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(1);
/// How much of a reason's text tells reasons apart.
const REASON_KEY_LEN: usize = 96;

/// Where the limiter reads the time.
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// What [`RefusalLogLimit::admit`] decided for one refusal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Admission {
    /// Whether this refusal's line is written.
    pub(crate) write: bool,
    /// Lines left out in the window that just ended, to be summarized before this line.
    pub(crate) suppressed_before: u64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
    reasons: HashSet<String>,
}

/// The rate limit of the verifier's refusal lines.
pub(crate) struct RefusalLogLimit {
    clock: Clock,
    window: Mutex<Window>,
}

impl std::fmt::Debug for RefusalLogLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLogLimit").finish_non_exhaustive()
    }
}

impl Default for RefusalLogLimit {
    fn default() -> Self {
        RefusalLogLimit::with_clock(Arc::new(Instant::now))
    }
}

impl RefusalLogLimit {
    /// A limiter reading the time from `clock`.
    pub(crate) fn with_clock(clock: Clock) -> Self {
        let started = clock();
        RefusalLogLimit {
            clock,
            window: Mutex::new(Window {
                started,
                written: 0,
                suppressed: 0,
                reasons: HashSet::new(),
            }),
        }
    }

    /// Decides whether the line of a refusal for `reason` is written, and reports what the
    /// window that just ended left out.
    pub(crate) fn admit(&self, reason: &str) -> Admission {
        let now = (self.clock)();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let mut suppressed_before = 0;
        if now.saturating_duration_since(w.started) >= REFUSAL_LOG_WINDOW {
            suppressed_before = std::mem::take(&mut w.suppressed);
            w.started = now;
            w.written = 0;
            w.reasons.clear();
        }
        let key = reason_key(reason);
        let new_reason = w.reasons.len() < MAX_REASONS_PER_WINDOW && w.reasons.insert(key);
        let write = new_reason || w.written < REFUSAL_LINES_PER_WINDOW;
        if write {
            w.written = w.written.saturating_add(1);
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
        }
        Admission {
            write,
            suppressed_before,
        }
    }

    /// Runs `line` (which writes the refusal's `warn` line) if the limit allows it, after the
    /// summary of the window that just ended, if it left anything out.
    pub(crate) fn warn(&self, reason: &str, line: impl FnOnce()) {
        let admission = self.admit(reason);
        log_suppressed(admission.suppressed_before);
        if admission.write {
            line();
        }
    }
}

impl Drop for RefusalLogLimit {
    fn drop(&mut self) {
        let w = self
            .window
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        log_suppressed(w.suppressed);
    }
}

fn log_suppressed(count: u64) {
    if count > 0 {
        tracing::warn!(
            suppressed = count,
            "client certificate refused: suppressed {count} similar lines"
        );
    }
}

/// The reason text without digits, cut to [`REASON_KEY_LEN`] characters.
fn reason_key(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(REASON_KEY_LEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn admit_n(limit: &RefusalLogLimit, reason: &str, n: usize) -> (usize, u64) {
        let mut written = 0;
        let mut summarized = 0;
        for _ in 0..n {
            let a = limit.admit(reason);
            written += usize::from(a.write);
            summarized += a.suppressed_before;
        }
        (written, summarized)
    }

    #[test]
    fn a_flood_writes_the_budget_then_one_summary_when_the_window_ends() {
        let (clock, now) = manual_clock();
        let limit = RefusalLogLimit::with_clock(clock);
        let budget = REFUSAL_LINES_PER_WINDOW as usize;
        assert_eq!(admit_n(&limit, "unknown issuer", 1000), (budget, 0));

        // Within the window, still nothing summarized and nothing written.
        *now.lock().unwrap() += REFUSAL_LOG_WINDOW / 2;
        assert_eq!(admit_n(&limit, "unknown issuer", 10), (0, 0));

        // The next window: the first refusal carries the count of the last one.
        *now.lock().unwrap() += REFUSAL_LOG_WINDOW;
        let first = limit.admit("unknown issuer");
        assert_eq!(
            first,
            Admission {
                write: true,
                suppressed_before: (1000 - budget + 10) as u64
            }
        );
        assert_eq!(admit_n(&limit, "unknown issuer", 1000), (budget - 1, 0));
    }

    #[test]
    fn the_first_of_each_reason_is_written_even_when_the_budget_is_spent() {
        let (clock, _now) = manual_clock();
        let limit = RefusalLogLimit::with_clock(clock);
        admit_n(&limit, "unknown issuer", 100);
        assert!(
            limit
                .admit("not authorized: not in trust domain a.org")
                .write
        );
        assert!(
            !limit
                .admit("not authorized: not in trust domain a.org")
                .write
        );
        // Digits do not make a new reason.
        assert!(limit.admit("certificate #1 expired at 2026").write);
        assert!(!limit.admit("certificate #2 expired at 2027").write);
    }

    #[test]
    fn distinct_reasons_cannot_bypass_the_limit() {
        let (clock, _now) = manual_clock();
        let limit = RefusalLogLimit::with_clock(clock);
        let written = (0..1000)
            .filter(|i| {
                let letters: String = i
                    .to_string()
                    .chars()
                    .map(|c| char::from(b'a' + (c as u8 - b'0')))
                    .collect();
                limit.admit(&format!("reason {letters}")).write
            })
            .count();
        assert_eq!(written, MAX_REASONS_PER_WINDOW);
    }
}
