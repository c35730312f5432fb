//! The policy layer's evaluation threads: admission fair between sources, and each
//! evaluation placed on a thread that keeps sources apart.
//!
//! Why placement matters: on Linux's EEVDF scheduler a thread that has just run a long
//! CPU-bound evaluation owes the scheduler its lag, and when it wakes for the next job it
//! is not eligible to run until that is paid (up to a scheduler slice, ≈ 3 ms). With one
//! shared queue the two threads of a 2-core pool took turns with an expensive source's
//! evaluations, so a cheap request often woke a thread in debt: on an idle machine its p99
//! grew from 0.4 to ≈ 3 ms while an expensive client hammered the pool, against 0.9× for a
//! plain spinning thread in that client's place (`examples/blocking_load.rs`,
//! docs/benchmarks.md). So each evaluation goes to an idle thread that last ran the same
//! source, else to the thread idle the longest: a hammering source keeps to its own
//! thread and the others keep theirs.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::Instant;

use policy_rego::{PolicyDecision, PolicyEngine, PolicyInput};
use tokio::sync::{Semaphore, oneshot};

use super::Source;

/// How a [`PolicyLayer`](super::PolicyLayer)'s evaluation pool is sized.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolConfig {
    pub(super) max_concurrent: usize,
    max_queued: usize,
    pub(super) per_source: usize,
}

impl PoolConfig {
    pub(super) fn new(max_concurrent: usize, max_queued: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        PoolConfig {
            max_concurrent,
            max_queued,
            per_source: (max_concurrent / 2).max(1),
        }
    }

    pub(super) fn default_size() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, DEFAULT_QUEUED_PER_THREAD * cores)
    }

    /// Evaluations running or waiting, all sources together.
    fn max_admitted(&self) -> usize {
        self.max_concurrent.saturating_add(self.max_queued)
    }

    /// Evaluations running or waiting for one source: half the places (at least one more
    /// than it may run), so that one source cannot crowd the others out.
    fn max_admitted_per_source(&self) -> usize {
        (self.max_admitted() / 2).max(self.per_source + 1)
    }
}

/// Evaluations that may wait for a turn per thread of the default pool.
const DEFAULT_QUEUED_PER_THREAD: usize = 16;

/// Threads of its own for policy evaluations (`zt-policy-N`, started at the first one,
/// stopped when the last layer using the pool is dropped), with admission fair between
/// sources and placement that keeps sources on their own threads (see the module docs).
/// Long-lived threads keep their prepared evaluators warm (policy-rego keeps one per
/// thread and policy set).
pub(super) struct EvaluationPool {
    pub(super) config: PoolConfig,
    /// One per evaluation allowed to run at once: one per started thread.
    running: Arc<Semaphore>,
    places: Mutex<Places>,
    /// Which threads are busy, and whom each served last.
    workers: Mutex<Vec<Worker>>,
    /// One job channel per thread; `None` if no thread could start.
    threads: OnceLock<Option<Vec<mpsc::Sender<Job>>>>,
}

#[derive(Default)]
struct Places {
    /// Evaluations running or waiting.
    admitted: usize,
    /// Sources with evaluations running or waiting; removed when they have none.
    sources: HashMap<Source, SourcePlaces>,
}

struct SourcePlaces {
    admitted: usize,
    /// One per evaluation the source may run at once.
    turns: Arc<Semaphore>,
}

/// A pool thread as the placement sees it.
#[derive(Debug, Clone)]
struct Worker {
    busy: bool,
    /// The source of the last evaluation it ran.
    last_source: Option<Source>,
    /// When it last became idle (or started).
    idle_since: Instant,
    /// Its thread is gone (a job could not be sent to it).
    gone: bool,
}

impl Worker {
    fn new(now: Instant) -> Self {
        Worker {
            busy: false,
            last_source: None,
            idle_since: now,
            gone: false,
        }
    }
}

/// The idle thread for an evaluation of `source`: one that last ran `source`, else the
/// one idle the longest (the likeliest to have paid off what it ran before).
fn choose_worker(workers: &[Worker], source: &Source) -> Option<usize> {
    let idle = || {
        workers
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.busy && !w.gone)
    };
    idle()
        .find(|(_, w)| w.last_source.as_ref() == Some(source))
        .or_else(|| idle().min_by_key(|(_, w)| w.idle_since))
        .map(|(i, _)| i)
}

/// Reasons given when the pool, not the policy, decides.
const SATURATED: &str = "policy evaluation pool saturated";
const PANICKED: &str = "policy evaluation panicked";
const CANCELLED: &str = "policy evaluation cancelled";
const UNAVAILABLE: &str = "policy evaluation pool unavailable";

impl EvaluationPool {
    pub(super) fn new(config: PoolConfig) -> Self {
        EvaluationPool {
            config,
            running: Arc::new(Semaphore::new(config.max_concurrent)),
            places: Mutex::new(Places::default()),
            workers: Mutex::new(Vec::new()),
            threads: OnceLock::new(),
        }
    }

    fn places(&self) -> MutexGuard<'_, Places> {
        // The counters stay consistent whatever panicked while they were held.
        self.places.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn workers(&self) -> MutexGuard<'_, Vec<Worker>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn decide(
        self: Arc<Self>,
        engine: PolicyEngine,
        input: PolicyInput,
        source: Source,
    ) -> PolicyDecision {
        let Some((admission, turns)) = Admission::enter(&self, source.clone()) else {
            tracing::warn!("policy evaluation pool saturated; request refused");
            return PolicyDecision::deny(SATURATED);
        };
        // Started before the first permit is taken, so that permits match started threads.
        let Some(jobs) = self.threads() else {
            return PolicyDecision::deny(UNAVAILABLE);
        };
        // First the source's turn, then a thread: a source that has all its turns in use
        // waits behind itself, never in front of others.
        let Ok(turn) = turns.acquire_owned().await else {
            return PolicyDecision::deny(CANCELLED);
        };
        let Ok(thread) = Arc::clone(&self.running).acquire_owned().await else {
            return PolicyDecision::deny(CANCELLED);
        };
        // Holding a permit means some thread is idle.
        let Some(claim) = WorkerClaim::take(&self, &source) else {
            return PolicyDecision::deny(UNAVAILABLE);
        };
        let index = claim.index;
        let Some(jobs) = jobs.get(index) else {
            return PolicyDecision::deny(UNAVAILABLE);
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let decision = panic::catch_unwind(AssertUnwindSafe(|| engine.decide(&input)));
            // Given back before the answer is sent, so the next request finds the place
            // free; the thread is marked idle before its permit is released.
            drop((claim, thread, turn, admission));
            // The request may be gone; nobody to tell then.
            let _ = tx.send(decision.ok());
        });
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            // Its thread is gone: never choose it again, and run with one permit less.
            if let Some(w) = self.workers().get_mut(index) {
                w.gone = true;
            }
            self.running.forget_permits(1);
            drop(job);
            return PolicyDecision::deny(UNAVAILABLE);
        }
        match rx.await {
            Ok(Some(decision)) => decision,
            Ok(None) => {
                tracing::error!("policy evaluation panicked; request refused");
                PolicyDecision::deny(PANICKED)
            }
            Err(_) => PolicyDecision::deny(UNAVAILABLE),
        }
    }

    /// The pool's threads (one job channel each), started at the first evaluation; `None`
    /// if none could start.
    fn threads(&self) -> Option<&[mpsc::Sender<Job>]> {
        self.threads
            .get_or_init(|| {
                let mut senders = Vec::with_capacity(self.config.max_concurrent);
                for i in 0..self.config.max_concurrent {
                    let (jobs, queue) = mpsc::channel::<Job>();
                    let spawned = std::thread::Builder::new()
                        .name(format!("zt-policy-{i}"))
                        .spawn(move || {
                            // Runs jobs until the pool (its sender) is gone.
                            for job in queue {
                                job();
                            }
                        });
                    match spawned {
                        Ok(_) => senders.push(jobs),
                        Err(err) => {
                            tracing::error!(error = %err, "could not start a policy evaluation thread");
                        }
                    }
                }
                // As many evaluations at once as there are threads.
                self.running
                    .forget_permits(self.config.max_concurrent - senders.len());
                let now = Instant::now();
                *self.workers() = vec![Worker::new(now); senders.len()];
                (!senders.is_empty()).then_some(senders)
            })
            .as_deref()
    }
}

/// One evaluation, as sent to a pool thread.
type Job = Box<dyn FnOnce() + Send>;

/// A thread taken for one evaluation; marked idle (and as having served its source) on drop.
struct WorkerClaim {
    pool: Arc<EvaluationPool>,
    index: usize,
    source: Source,
}

impl WorkerClaim {
    fn take(pool: &Arc<EvaluationPool>, source: &Source) -> Option<Self> {
        let mut workers = pool.workers();
        let index = choose_worker(&workers, source)?;
        workers.get_mut(index)?.busy = true;
        Some(WorkerClaim {
            pool: Arc::clone(pool),
            index,
            source: source.clone(),
        })
    }
}

impl Drop for WorkerClaim {
    fn drop(&mut self) {
        let mut workers = self.pool.workers();
        if let Some(w) = workers.get_mut(self.index) {
            w.busy = false;
            w.last_source = Some(self.source.clone());
            w.idle_since = Instant::now();
        }
    }
}

/// A place among the pool's admitted evaluations, given back on drop.
struct Admission {
    pool: Arc<EvaluationPool>,
    source: Source,
}

impl Admission {
    fn enter(pool: &Arc<EvaluationPool>, source: Source) -> Option<(Self, Arc<Semaphore>)> {
        let config = pool.config;
        let mut places = pool.places();
        if places.admitted >= config.max_admitted() {
            return None;
        }
        let entry = places
            .sources
            .entry(source.clone())
            .or_insert_with(|| SourcePlaces {
                admitted: 0,
                turns: Arc::new(Semaphore::new(config.per_source)),
            });
        if entry.admitted >= config.max_admitted_per_source() {
            return None;
        }
        entry.admitted += 1;
        let turns = Arc::clone(&entry.turns);
        places.admitted += 1;
        drop(places);
        let admission = Admission {
            pool: Arc::clone(pool),
            source,
        };
        Some((admission, turns))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut places = self.pool.places();
        places.admitted = places.admitted.saturating_sub(1);
        if let Some(entry) = places.sources.get_mut(&self.source) {
            entry.admitted = entry.admitted.saturating_sub(1);
            if entry.admitted == 0 {
                places.sources.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn source(last: u8) -> Source {
        Source::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn worker(busy: bool, last: Option<u8>, idle_since: Instant) -> Worker {
        Worker {
            busy,
            last_source: last.map(source),
            idle_since,
            gone: false,
        }
    }

    #[test]
    fn a_source_goes_back_to_the_idle_thread_that_last_served_it() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(50);
        // Thread 1 has just finished an evaluation for the hammering source 3; thread 0
        // last served source 2.
        let workers = [worker(false, Some(2), t0), worker(false, Some(3), t1)];
        assert_eq!(choose_worker(&workers, &source(3)), Some(1));
        assert_eq!(choose_worker(&workers, &source(2)), Some(0));
    }

    #[test]
    fn another_source_gets_the_thread_idle_the_longest() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(50);
        let workers = [worker(false, Some(3), t1), worker(false, Some(2), t0)];
        assert_eq!(choose_worker(&workers, &source(9)), Some(1));
    }

    #[test]
    fn busy_and_gone_threads_are_never_chosen() {
        let t0 = Instant::now();
        let mut workers = [worker(true, Some(3), t0), worker(false, Some(2), t0)];
        assert_eq!(choose_worker(&workers, &source(3)), Some(1));
        workers[1].gone = true;
        assert_eq!(choose_worker(&workers, &source(3)), None);
    }

    #[test]
    fn a_claim_marks_its_thread_busy_until_dropped_and_remembers_the_source() {
        let pool = Arc::new(EvaluationPool::new(PoolConfig::new(2, 4)));
        assert_eq!(pool.threads().map(<[_]>::len), Some(2));
        let first = WorkerClaim::take(&pool, &source(3)).unwrap();
        let second = WorkerClaim::take(&pool, &source(2)).unwrap();
        assert_ne!(first.index, second.index);
        assert!(
            WorkerClaim::take(&pool, &source(4)).is_none(),
            "both threads busy"
        );
        let (a, b) = (first.index, second.index);
        drop(first);
        drop(second);
        // Each source finds its own thread again, whatever order it asks in.
        assert_eq!(
            WorkerClaim::take(&pool, &source(2)).map(|c| c.index),
            Some(b)
        );
        assert_eq!(
            WorkerClaim::take(&pool, &source(3)).map(|c| c.index),
            Some(a)
        );
    }
}
