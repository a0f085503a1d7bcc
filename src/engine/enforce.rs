//! The enforcer: owns the dataplane and brings the kernel to the desired ruleset, whatever the
//! source of that ruleset (a manifest folder or the Kubernetes API).
//!
//! Failure policy: a transaction the kernel rejects leaves the previous ruleset in force (the
//! kernel applies a batch whole or not at all) and is retried with exponential backoff; after an
//! I/O error the kernel may hold anything, so the retry replaces the whole table. A periodic
//! resync compares the kernel with the last committed ruleset and repairs drift (someone ran
//! `nft flush ruleset`) with a full replace of it, also while a newer ruleset keeps failing:
//! a failing update must not leave a flushed node open until it succeeds. On shutdown the rules stay in place: a restarting
//! daemon must not open the node.
//!
//! It also records every commit, failure and repair in the metrics (`crate::observe::metrics`),
//! writes the status file after every apply ([`super::status`]), and with `--strict` cuts the
//! open connections a new plan denies ([`super::strict`]).
//!
//! The kernel is behind [`Driver`]: [`Dataplane`] in production, an in-memory fake in the unit
//! tests below.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::conntrack::Conntrack;
use crate::dataplane::{ApplyKind, Dataplane, DataplaneError, Driver, Ruleset};
use crate::observe::metrics::Metrics;
use crate::policy::compile::NodePlan;

pub use super::signals::install_signal_thread;
use super::status::write_status;
use super::strict::{Cut, SWEEP_BUDGET, cut_denied};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A ruleset to enforce, with what it was built from (for logs and the status file) and when
/// the change that led to it arrived (for the policy implementation delay).
#[derive(Debug)]
pub struct Desired {
    pub ruleset: Ruleset,
    /// What was read: the manifest fingerprint, or a summary of the API state.
    pub fingerprint: String,
    pub since: Instant,
    /// The plan the ruleset was built from; `--strict` judges open connections with it (and
    /// does nothing without it).
    pub plan: Option<Arc<NodePlan>>,
}

/// A `--strict` sweep from the start, or going on with what an unfinished one left.
enum Sweep {
    Dump,
    GoOn(Cut),
}

/// The delays between retries of a failing apply: doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], and back to the first after a success or a newer desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    /// The delay before the next retry (growing the one after).
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }
}

pub struct Enforcer {
    dp: Box<dyn Driver>,
    status_file: Option<PathBuf>,
    generation: u64,
    /// Wanted but not yet committed (a failed apply waits here for its retry).
    pending: Option<Desired>,
    /// The last ruleset committed: what drift is repaired toward (the driver forgets its own
    /// copy after an I/O error).
    committed: Option<Ruleset>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    metrics: Option<Metrics>,
    /// `--strict`: the ctnetlink socket that cuts connections the plan no longer allows.
    conntrack: Option<Conntrack>,
    /// Connections cut so far.
    cut: u64,
    /// A `--strict` sweep that ran out of budget: what it left to delete at the next tick,
    /// with the plan and whether node traffic is policed (to dump again if it overflowed).
    resweep: Option<(Cut, Arc<NodePlan>, bool)>,
    /// Told of every committed ruleset, and whether it replaced the table (the DNS reader
    /// learns for its `domainNames` rules and puts learned addresses back after a replace).
    on_applied: Option<OnApplied>,
}

/// See [`Enforcer::on_applied`].
pub type OnApplied = Box<dyn FnMut(&Ruleset, bool) + Send>;

impl Enforcer {
    /// Opens the dataplane in the calling thread's network namespace.
    pub fn new(status_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let dp = Dataplane::new().context("opening the netfilter netlink socket")?;
        Ok(Self::with_driver(dp, status_file))
    }

    /// Enforces through `driver` instead of the kernel's nftables (tests use a fake).
    pub fn with_driver(driver: impl Driver + 'static, status_file: Option<PathBuf>) -> Self {
        Self {
            dp: Box::new(driver),
            status_file,
            generation: 0,
            pending: None,
            committed: None,
            backoff: Backoff::new(),
            retry_at: None,
            metrics: None,
            conntrack: None,
            cut: 0,
            resweep: None,
            on_applied: None,
        }
    }

    /// Calls `f` with every ruleset committed from now on, and whether the table was replaced
    /// (a full apply or a drift repair).
    pub fn on_applied(&mut self, f: OnApplied) {
        self.on_applied = Some(f);
    }

    /// Records every apply, failure and drift repair in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = Some(metrics);
    }

    /// `--strict`: after every apply that changes the ruleset, deletes the conntrack entries of
    /// open connections the new plan denies. Opens the ctnetlink socket in the calling
    /// thread's network namespace, as [`Enforcer::new`] does for the dataplane.
    pub fn strict(mut self, on: bool) -> anyhow::Result<Self> {
        self.conntrack = if on {
            Some(Conntrack::open().context("opening the conntrack netlink socket")?)
        } else {
            None
        };
        Ok(self)
    }

    /// Connections cut by `--strict` so far.
    pub fn cut_connections(&self) -> u64 {
        self.cut
    }

    /// Number of successful applies so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the next retry is due, if an apply failed.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// When [`Enforcer::tick`] has work next: a retry, or at once the rest of a `--strict`
    /// sweep that ran out of budget.
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        let sweep = self.resweep.as_ref().map(|_| now);
        match (self.retry_at, sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Enforces `desired` now (replacing any pending retry with the newer state).
    pub fn submit(&mut self, desired: Desired) {
        self.pending = Some(desired);
        self.backoff.reset();
        self.try_apply();
    }

    /// Retries a failed apply if its time has come, and goes on with an unfinished sweep.
    pub fn tick(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
            self.try_apply();
        }
        if let Some((cut, plan, police_node)) = self.resweep.take() {
            if cut.left() == 0 {
                // It remembered only part of what was denied: judge the table again.
                self.sweep(Sweep::Dump, plan, police_node);
            } else {
                self.sweep(Sweep::GoOn(cut), plan, police_node);
            }
        }
    }

    /// `--strict`: deletes the conntrack entries `plan` denies, for at most [`SWEEP_BUDGET`];
    /// an unfinished sweep goes on at the next tick.
    fn sweep(&mut self, how: Sweep, plan: Arc<NodePlan>, police_node: bool) {
        let Some(ct) = self.conntrack.as_mut() else {
            return;
        };
        let res = match how {
            Sweep::Dump => cut_denied(ct, &plan, police_node, SWEEP_BUDGET),
            Sweep::GoOn(mut cut) => cut.go_on(ct, SWEEP_BUDGET).map(|s| (s, cut)),
        };
        match res {
            Ok((s, cut)) => {
                self.cut += s.cut;
                if let Some(m) = &self.metrics {
                    m.observe_sweep(s.cut, s.took);
                }
                if s.cut > 0 || !s.complete {
                    tracing::info!(
                        cut = s.cut,
                        total = self.cut,
                        examined = s.examined,
                        complete = s.complete,
                        took_ms = s.took.as_secs_f64() * 1e3,
                        "cut {} connections no longer allowed",
                        s.cut
                    );
                }
                if !s.complete {
                    self.resweep = Some((cut, plan, police_node));
                }
            }
            // The ruleset is in force; only the cut is missing. The next change sweeps again.
            Err(e) => tracing::error!("strict: cutting connections failed: {e}"),
        }
    }

    fn try_apply(&mut self) {
        let Some(desired) = &self.pending else { return };
        match self.dp.apply(&desired.ruleset) {
            Ok(report) => {
                self.generation += 1;
                tracing::info!(
                    generation = self.generation,
                    kind = ?report.kind,
                    messages = report.messages,
                    bytes = report.bytes,
                    build_ms = report.build.as_secs_f64() * 1e3,
                    kernel_ms = report.kernel.as_secs_f64() * 1e3,
                    delay_ms = desired.since.elapsed().as_secs_f64() * 1e3,
                    chains = desired.ruleset.chain_count(),
                    elements = desired.ruleset.element_count(),
                    fingerprint = %desired.fingerprint,
                    "applied"
                );
                if let Some(m) = &self.metrics {
                    m.observe_commits(&self.dp.take_commit_times());
                    m.observe_apply(desired.since, &desired.ruleset, &self.dp.stats());
                }
                // Audit mode drops nothing, so it cuts nothing either.
                let sweep = (report.kind != ApplyKind::Unchanged && !desired.ruleset.options.audit)
                    .then(|| desired.plan.clone())
                    .flatten()
                    .map(|plan| (plan, desired.ruleset.options.police_node_traffic));
                // Before the status file says it is in force: a pod may resolve right after.
                if let Some(f) = &mut self.on_applied {
                    f(&desired.ruleset, report.kind == ApplyKind::Full);
                }
                if let Some(path) = &self.status_file
                    && let Err(e) = write_status(path, self.generation, &desired.fingerprint)
                {
                    tracing::error!("status file: {e:#}");
                }
                self.committed = self.pending.take().map(|d| d.ruleset);
                self.retry_at = None;
                self.backoff.reset();
                if let Some((plan, police_node)) = sweep {
                    // A newer plan supersedes an unfinished sweep of an older one.
                    self.resweep = None;
                    self.sweep(Sweep::Dump, plan, police_node);
                }
            }
            Err(e) => {
                for r in e.rejected() {
                    tracing::error!(object = %r.object, "rejected: {r}");
                }
                let delay = self.backoff.next_delay();
                tracing::error!(
                    failures = self.dp.stats().failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "apply failed, the previous ruleset stays in force: {e}"
                );
                if let Some(m) = &self.metrics {
                    m.observe_commits(&self.dp.take_commit_times());
                    m.observe_failure(&e, &self.dp.stats());
                }
                if !matches!(e, DataplaneError::Rejected(_)) {
                    self.dp.invalidate();
                }
                self.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Checks the kernel against the last committed ruleset and repairs drift, whether or not
    /// a newer ruleset is waiting for its retry (that retry then starts from the repaired
    /// table).
    pub fn resync(&mut self) {
        let Some(committed) = &self.committed else {
            return; // nothing committed yet: the pending apply writes the whole table
        };
        match self.dp.check_drift(committed) {
            Ok(None) => tracing::debug!("no drift"),
            Ok(Some(drift)) => {
                tracing::warn!(
                    update_pending = self.pending.is_some(),
                    "drift detected, replacing the table with the last committed ruleset: {drift}"
                );
                match self.dp.repair_drift(committed) {
                    Ok(_) => {
                        tracing::info!(repairs = self.dp.stats().drift_repairs, "drift repaired");
                        if let Some(f) = &mut self.on_applied {
                            f(committed, true);
                        }
                    }
                    Err(e) => tracing::error!("drift repair failed: {e}"),
                }
            }
            Err(e) => tracing::error!("drift check failed: {e}"),
        }
        if let Some(m) = &self.metrics {
            m.observe_commits(&self.dp.take_commit_times());
            m.observe_stats(&self.dp.stats());
        }
    }
}

/// Logs whether bridged traffic can be filtered on this node (br_netfilter), loudly if not.
pub fn report_br_netfilter() -> BrNetfilter {
    BrNetfilter::probe_and_report()
}

#[cfg(test)]
mod tests {
    //! The enforcer against the in-memory fake dataplane: no kernel, no root, no sleeping
    //! (a retry is due at `retry_at`, and the tests pass that instant to `tick`).

    use super::*;
    use crate::dataplane::Options;
    use crate::dataplane::fake::{Failure, FakeDataplane};
    use crate::engine::status::read_status;
    use crate::engine::status::tests::TempDir;
    use ApplyKind::{Diff, Full};

    /// Distinct rulesets (the NFLOG group is part of the options).
    fn ruleset(n: u16) -> Ruleset {
        let options = Options {
            nflog_group: Some(n),
            ..Options::default()
        };
        Ruleset::build(&NodePlan::default(), options)
    }

    fn desired(n: u16) -> Desired {
        Desired {
            ruleset: ruleset(n),
            fingerprint: format!("fp{n}"),
            since: Instant::now(),
            plan: None,
        }
    }

    fn enforcer() -> (Enforcer, FakeDataplane) {
        let fake = FakeDataplane::default();
        (Enforcer::with_driver(fake.clone(), None), fake)
    }

    /// Runs `f` and checks that it scheduled a retry `delay` after the moment it ran:
    /// `retry_at` is taken as `Instant::now() + delay` somewhere between `t0` and `t1`.
    fn assert_schedules(e: &mut Enforcer, delay: Duration, f: impl FnOnce(&mut Enforcer)) {
        let t0 = Instant::now();
        f(e);
        let t1 = Instant::now();
        let at = e.retry_at().expect("a retry is scheduled");
        assert!(
            at >= t0 + delay && at <= t1 + delay,
            "retry not scheduled {delay:?} after the failure"
        );
    }

    /// Fires the scheduled retry.
    fn retry(e: &mut Enforcer) {
        let at = e.retry_at().expect("a retry is scheduled");
        e.tick(at);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), FIRST_BACKOFF);
    }

    #[test]
    fn failing_apply_is_retried_with_growing_capped_delays() {
        let (mut e, fake) = enforcer();
        fake.fail_next(100, Failure::Io);
        assert_schedules(&mut e, Duration::from_millis(200), |e| e.submit(desired(1)));
        for ms in [400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000] {
            assert_schedules(&mut e, Duration::from_millis(ms), retry);
        }
        assert_eq!(e.generation(), 0);
        // One batch per attempt, each a full replace (an I/O error invalidates), none committed.
        assert_eq!(fake.sent(), vec![(Full, false); 10]);
        assert_eq!(fake.kernel(), None);
    }

    #[test]
    fn backoff_resets_after_a_success() {
        let (mut e, fake) = enforcer();
        fake.fail_next(3, Failure::Io);
        assert_schedules(&mut e, Duration::from_millis(200), |e| e.submit(desired(1)));
        assert_schedules(&mut e, Duration::from_millis(400), retry);
        assert_schedules(&mut e, Duration::from_millis(800), retry);
        retry(&mut e);
        assert_eq!(e.retry_at(), None);
        assert_eq!(e.generation(), 1);
        assert_eq!(fake.kernel(), Some(ruleset(1)));

        fake.fail_next(1, Failure::Io);
        assert_schedules(&mut e, Duration::from_millis(200), |e| e.submit(desired(2)));
    }

    #[test]
    fn a_newer_state_resets_the_backoff_and_replaces_the_pending_one() {
        let (mut e, fake) = enforcer();
        fake.fail_next(3, Failure::Io);
        assert_schedules(&mut e, Duration::from_millis(200), |e| e.submit(desired(1)));
        assert_schedules(&mut e, Duration::from_millis(400), retry);
        assert_schedules(&mut e, Duration::from_millis(200), |e| e.submit(desired(2)));
        retry(&mut e);
        assert_eq!(fake.kernel(), Some(ruleset(2)));
        assert_eq!(e.generation(), 1);
        assert_eq!(
            fake.state().transactions.last().unwrap().ruleset,
            ruleset(2)
        );
    }

    #[test]
    fn tick_before_the_retry_is_due_sends_nothing() {
        let (mut e, fake) = enforcer();
        fake.fail_next(1, Failure::Io);
        let before = Instant::now();
        e.submit(desired(1));
        e.tick(before);
        assert_eq!(fake.sent().len(), 1);
        assert!(e.retry_at().is_some());
        retry(&mut e);
        assert_eq!(fake.sent(), [(Full, false), (Full, true)]);
        // Nothing is pending any more: ticks do nothing.
        e.tick(Instant::now() + MAX_BACKOFF * 2);
        assert_eq!(fake.sent().len(), 2);
    }

    #[test]
    fn updates_are_diffs_and_an_unchanged_ruleset_sends_nothing() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        e.submit(desired(2));
        e.submit(desired(2));
        assert_eq!(fake.sent(), [(Full, true), (Diff, true)]);
        // An unchanged ruleset still counts as an apply (and rewrites the status file).
        assert_eq!(e.generation(), 3);
    }

    #[test]
    fn a_rejected_update_keeps_the_previous_ruleset_and_is_retried() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        // The diff and its full-replace fallback are both rejected.
        fake.fail_next(2, Failure::Reject);
        e.submit(desired(2));
        assert_eq!(fake.sent(), [(Full, true), (Diff, false), (Full, false)]);
        assert_eq!(fake.kernel(), Some(ruleset(1)));
        assert_eq!(e.generation(), 1);
        // A rejection does not invalidate: the kernel still holds what was applied, so the
        // retry is a diff again.
        retry(&mut e);
        assert_eq!(fake.sent().last(), Some(&(Diff, true)));
        assert_eq!(fake.kernel(), Some(ruleset(2)));
        assert_eq!(e.retry_at(), None);
        let stats = fake.state().stats.clone();
        assert_eq!((stats.failures, stats.transaction_errors), (2, 2));
        assert_eq!((stats.full_applies, stats.diff_applies), (1, 1));
    }

    #[test]
    fn an_io_error_makes_the_retry_replace_the_table() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        fake.fail_next(1, Failure::Io);
        e.submit(desired(2));
        // An I/O error is not retried as a full replace at once…
        assert_eq!(fake.sent(), [(Full, true), (Diff, false)]);
        // …but the kernel may hold anything: the retry replaces the table.
        retry(&mut e);
        assert_eq!(fake.sent().last(), Some(&(Full, true)));
        assert_eq!(fake.kernel(), Some(ruleset(2)));
    }

    #[test]
    fn drift_is_repaired_with_a_full_replace() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        e.resync();
        assert_eq!(fake.sent().len(), 1, "no drift, no transaction");
        fake.flush();
        e.resync();
        assert_eq!(fake.sent().last(), Some(&(Full, true)));
        assert_eq!(fake.kernel(), Some(ruleset(1)));
        assert_eq!(fake.state().stats.drift_repairs, 1);
        assert_eq!(fake.state().drift_checks, 3);
        // Repairs are not applies.
        assert_eq!(e.generation(), 1);
    }

    #[test]
    fn a_failed_drift_repair_is_tried_again_at_the_next_resync() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        fake.flush();
        fake.fail_next(1, Failure::Reject);
        e.resync();
        assert_eq!(fake.kernel(), None);
        assert_eq!(e.retry_at(), None, "a repair is not retried with backoff");
        e.resync();
        assert_eq!(fake.kernel(), Some(ruleset(1)));
        assert_eq!(fake.state().stats.drift_repairs, 1);
    }

    #[test]
    fn resync_checks_the_committed_ruleset_while_an_apply_is_failing() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        fake.fail_next(100, Failure::Io);
        e.submit(desired(2));
        let sent = fake.sent().len();
        e.resync();
        assert_eq!(fake.state().drift_checks, 1);
        assert_eq!(fake.sent().len(), sent, "no drift, no transaction");
    }

    #[test]
    fn resync_before_any_commit_checks_nothing() {
        let (mut e, fake) = enforcer();
        fake.fail_next(1, Failure::Reject);
        e.submit(desired(1));
        e.resync();
        assert_eq!(fake.state().drift_checks, 0);
    }

    /// A rejected update plus `nft flush ruleset`: the resync puts the last committed ruleset
    /// back at once (the node is not left open while the update fails), and the update's
    /// retry then commits as a diff from it.
    #[test]
    fn drift_while_updates_keep_failing_is_repaired_to_the_last_commit() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        fake.fail_next(2, Failure::Reject);
        e.submit(desired(2));
        fake.flush();
        e.resync();
        assert_eq!(
            fake.kernel(),
            Some(ruleset(1)),
            "repaired while the update fails"
        );
        assert_eq!(fake.sent().last(), Some(&(Full, true)));
        assert_eq!(fake.state().stats.drift_repairs, 1);
        assert_eq!(e.generation(), 1);
        assert!(e.retry_at().is_some(), "the update is still to be retried");
        e.resync();
        assert_eq!(fake.state().stats.drift_repairs, 1, "no drift left");

        retry(&mut e);
        assert_eq!(fake.sent().last(), Some(&(Diff, true)));
        assert_eq!(fake.kernel(), Some(ruleset(2)));
        assert_eq!(e.generation(), 2);
        // From now on drift is judged against the new commit.
        fake.flush();
        e.resync();
        assert_eq!(fake.kernel(), Some(ruleset(2)));
        assert_eq!(fake.state().stats.drift_repairs, 2);
    }

    /// After an I/O error the driver forgets what it applied; the enforcer still knows what it
    /// committed, and repairs toward it.
    #[test]
    fn drift_after_an_io_error_is_repaired_to_the_last_commit() {
        let (mut e, fake) = enforcer();
        e.submit(desired(1));
        fake.fail_next(2, Failure::Io);
        e.submit(desired(2));
        retry(&mut e);
        fake.flush();
        e.resync();
        assert_eq!(fake.kernel(), Some(ruleset(1)));
        assert_eq!(fake.state().stats.drift_repairs, 1);
        retry(&mut e);
        assert_eq!(fake.kernel(), Some(ruleset(2)));
    }

    #[test]
    fn status_file_follows_successful_applies_only() {
        let dir = TempDir::new("enforce-status");
        let path = dir.0.join("status.json");
        let fake = FakeDataplane::default();
        let mut e = Enforcer::with_driver(fake.clone(), Some(path.clone()));
        e.submit(desired(1));
        let s = read_status(&path).unwrap();
        assert_eq!((s.generation, s.fingerprint.as_str()), (1, "fp1"));

        fake.fail_next(2, Failure::Reject);
        e.submit(desired(2));
        let s = read_status(&path).unwrap();
        assert_eq!((s.generation, s.fingerprint.as_str()), (1, "fp1"));

        retry(&mut e);
        let s = read_status(&path).unwrap();
        assert_eq!((s.generation, s.fingerprint.as_str()), (2, "fp2"));

        // A drift repair is not an apply: the status stays.
        fake.flush();
        e.resync();
        assert_eq!(read_status(&path).unwrap().generation, 2);
    }

    #[test]
    fn an_unwritable_status_file_does_not_fail_the_apply() {
        let dir = TempDir::new("enforce-status-err");
        let path = dir.0.join("no-such-dir").join("status.json");
        let fake = FakeDataplane::default();
        let mut e = Enforcer::with_driver(fake.clone(), Some(path));
        e.submit(desired(1));
        assert_eq!(e.generation(), 1);
        assert_eq!(e.retry_at(), None);
    }

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    }

    #[test]
    fn metrics_count_failures_transactions_and_commits() {
        let (mut e, fake) = enforcer();
        let m = Metrics::new();
        e.set_metrics(m.clone());
        e.submit(desired(1));
        fake.fail_next(2, Failure::Reject);
        e.submit(desired(2));
        let text = m.encode();
        assert_eq!(sample(&text, "nftpol_int_dataplane_failures"), 1.0);
        assert_eq!(sample(&text, "nftpol_nft_transactions"), 3.0);
        assert_eq!(sample(&text, "nftpol_nft_errors"), 2.0);
        assert_eq!(
            sample(&text, "nftpol_int_dataplane_apply_time_seconds_count"),
            1.0
        );

        retry(&mut e);
        fake.flush();
        e.resync();
        let text = m.encode();
        assert_eq!(sample(&text, "nftpol_int_dataplane_failures"), 1.0);
        // The diff of the retry and the full replace of the drift repair.
        assert_eq!(sample(&text, "nftpol_nft_transactions"), 5.0);
        assert_eq!(sample(&text, "nftpol_nft_errors"), 2.0);
        assert_eq!(
            sample(&text, "nftpol_int_dataplane_apply_time_seconds_count"),
            3.0
        );
    }
}
