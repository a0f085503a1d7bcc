//! Liveness and readiness: the main loop's heartbeat behind `/livez`, and the conditions behind
//! `/readyz` (first sync done, last transaction committed, bridged traffic filtered, API watches
//! running). [`Metrics`](super::metrics::Metrics) holds one [`Health`] and feeds it from the same
//! calls that move the metrics; the HTTP server only asks it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock;

/// The main loop is dead when its heartbeat is older than this.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the main loops must wake up (at the latest) to beat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

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
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the main loop's last beat.
    heartbeat_ms: AtomicU64,
    readiness: Mutex<Readiness>,
}

impl Health {
    /// Alive (as if it had just beaten at `started`) and not ready.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            heartbeat_ms: AtomicU64::new(0),
            readiness: Mutex::new(Readiness::default()),
        }
    }

    /// The main loop is alive: called on every wake-up.
    pub fn heartbeat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// `Err(reason)` when the main loop has not beaten for [`LIVENESS_TIMEOUT`].
    pub fn livez(&self) -> Result<(), String> {
        let beat = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        let age = self.started.elapsed().saturating_sub(beat);
        if age > LIVENESS_TIMEOUT {
            return Err(format!("the main loop has not run for {}s", age.as_secs()));
        }
        Ok(())
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

    #[test]
    fn liveness_follows_the_heartbeat() {
        let h = Health::new(Instant::now());
        h.heartbeat();
        assert_eq!(h.livez(), Ok(()));
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
