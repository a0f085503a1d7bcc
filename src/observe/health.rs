//! Liveness and readiness: the main loop's heartbeat and the tasks the daemon needs behind
//! `/livez`, and the conditions behind `/readyz` (first sync done, last transaction committed,
//! bridged traffic filtered, API watches running). Time comes from a [`Clock`], so that the
//! tests can make the heartbeat old without sleeping. [`Metrics`](super::metrics::Metrics) holds one [`Health`] and feeds it from the same
//! calls that move the metrics; the HTTP server only asks it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// The main loop is dead when its heartbeat is older than this.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the main loops must wake up (at the latest) to beat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Where [`Health`] reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock of the system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What `/readyz` looks at.
#[derive(Debug, Default)]
struct Readiness {
    synced: bool,
    last_tx_error: Option<String>,
    br_netfilter_problem: Option<String>,
    watches_stopped: Option<String>,
    last_watch_error: Option<String>,
}

/// The liveness and readiness state of one nftpol process.
pub struct Health {
    clock: Arc<dyn Clock>,
    started: Instant,
    /// Milliseconds since `started` of the main loop's last beat.
    heartbeat_ms: AtomicU64,
    /// A task the daemon cannot work without ended (the API watches): restarting the process
    /// is the only repair, so liveness fails.
    dead: Mutex<Option<String>>,
    readiness: Mutex<Readiness>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("started", &self.started)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("dead", &self.dead)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Alive (as if it had just beaten at `started`) and not ready, on the system clock.
    pub fn new(started: Instant) -> Self {
        Self::with_clock(Arc::new(SystemClock), started)
    }

    /// As [`Health::new`], reading the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>, started: Instant) -> Self {
        Self {
            clock,
            started,
            heartbeat_ms: AtomicU64::new(0),
            dead: Mutex::new(None),
            readiness: Mutex::new(Readiness::default()),
        }
    }

    fn since_start(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.started)
    }

    /// The main loop is alive: called on every wake-up.
    pub fn heartbeat(&self) {
        let ms = self.since_start().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// `Err(reason)` when the main loop has not beaten for [`LIVENESS_TIMEOUT`], or when a
    /// task the daemon needs has stopped ([`Health::task_stopped`]).
    pub fn livez(&self) -> Result<(), String> {
        if let Some(what) = lock(&self.dead).as_ref() {
            return Err(format!("{what} stopped; restart the process"));
        }
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let age = self.since_start().saturating_sub(beat);
        if age > LIVENESS_TIMEOUT {
            return Err(format!("the main loop has not run for {}s", age.as_secs()));
        }
        Ok(())
    }

    /// A task the daemon needs ended for good (`what` names it): not live, and not ready.
    pub fn task_stopped(&self, what: &str) {
        lock(&self.dead).get_or_insert_with(|| what.to_string());
        self.watches_stopped();
    }

    /// `Err(reason)` until the first ruleset is committed, after a failed transaction (until
    /// one succeeds), when bridged traffic bypasses nftables, or when the API watches stopped.
    pub fn readyz(&self) -> Result<(), String> {
        let r = lock(&self.readiness);
        if !r.synced {
            return Err("the first full sync is not done".into());
        }
        if let Some(e) = &r.last_tx_error {
            return Err(format!("the last transaction failed: {e}"));
        }
        if let Some(p) = &r.br_netfilter_problem {
            return Err(p.clone());
        }
        if let Some(w) = &r.watches_stopped {
            return Err(w.clone());
        }
        Ok(())
    }

    /// A ruleset was committed (or found unchanged): synced, and no failed transaction.
    pub fn committed(&self) {
        let mut r = lock(&self.readiness);
        r.synced = true;
        r.last_tx_error = None;
    }

    /// A transaction failed; unready until the next commit.
    pub fn failed(&self, error: String) {
        lock(&self.readiness).last_tx_error = Some(error);
    }

    /// The br_netfilter check's problem, if any, makes the node unready.
    pub fn br_netfilter(&self, problem: Option<String>) {
        lock(&self.readiness).br_netfilter_problem = problem;
    }

    /// The last watch error (`None` once the watches deliver again), kept for the reason text.
    pub fn watch_error(&self, error: Option<String>) {
        lock(&self.readiness).last_watch_error = error;
    }

    /// The API watchers ended (they retry forever otherwise): the node is not ready.
    pub fn watches_stopped(&self) {
        let mut r = lock(&self.readiness);
        let last = r.last_watch_error.clone();
        r.watches_stopped = Some(match last {
            Some(e) => format!("the API watches stopped (last error: {e})"),
            None => "the API watches stopped".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    struct FakeClock(Mutex<Instant>);

    impl FakeClock {
        fn advance(&self, by: Duration) {
            *lock(&self.0) += by;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *lock(&self.0)
        }
    }

    fn fake_health() -> (Health, Arc<FakeClock>) {
        let start = Instant::now();
        let clock = Arc::new(FakeClock(Mutex::new(start)));
        (Health::with_clock(clock.clone(), start), clock)
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        let h = Health::new(Instant::now());
        h.heartbeat();
        assert_eq!(h.livez(), Ok(()));
    }

    #[test]
    fn liveness_fails_when_the_heartbeat_is_older_than_the_timeout() {
        let (h, clock) = fake_health();
        clock.advance(LIVENESS_TIMEOUT);
        assert_eq!(h.livez(), Ok(()), "exactly the timeout is still alive");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            h.livez(),
            Err("the main loop has not run for 31s".to_string())
        );
        h.heartbeat();
        assert_eq!(h.livez(), Ok(()));
        clock.advance(LIVENESS_TIMEOUT + Duration::from_secs(5));
        assert_eq!(
            h.livez(),
            Err("the main loop has not run for 35s".to_string())
        );
    }

    #[test]
    fn liveness_fails_for_good_when_a_needed_task_stopped() {
        let (h, clock) = fake_health();
        h.committed();
        h.task_stopped("the API watches");
        let err = h.livez().expect_err("not live");
        assert!(err.contains("the API watches stopped"), "{err}");
        assert!(h.readyz().is_err());
        // A beating main loop does not bring a dead watcher back.
        clock.advance(Duration::from_secs(1));
        h.heartbeat();
        assert!(h.livez().is_err());
    }

    #[test]
    fn readiness_needs_a_commit_and_follows_failures_and_watches() {
        let h = Health::new(Instant::now());
        assert_eq!(
            h.readyz(),
            Err("the first full sync is not done".to_string())
        );
        h.committed();
        assert_eq!(h.readyz(), Ok(()));
        h.failed("rejected".into());
        assert!(h.readyz().is_err_and(|r| r.contains("rejected")));
        h.committed();
        h.watch_error(Some("pods: gone".into()));
        assert_eq!(h.readyz(), Ok(()));
        h.watches_stopped();
        assert_eq!(
            h.readyz(),
            Err("the API watches stopped (last error: pods: gone)".to_string())
        );
    }
}
