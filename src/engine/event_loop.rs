//! The one event loop of `run` and `daemon`: one thread owns the enforcer and takes every
//! [`Input`] from one channel: source events ([`crate::source::Event`]), flow-log packets and
//! SIGTERM/SIGINT (taken by a `sigwait` thread). Retries after a failed apply and the periodic
//! resync (drift check, repaired by a full replace) are deadlines of that same loop.
//!
//! A change starts a burst, drained with [`until_quiet`] until the source has been quiet for
//! a while (an editor's writes, a relist, a rollout); every change of the burst is folded into
//! the [`StateSource`], which is then asked once for the [`State`] to enforce. That trait is
//! all that differs between the manifest folder and the Kubernetes API
//! (`crate::engine::state`). Flow logs are resolved against the source's current plan and
//! index, also during a burst, and do not prolong it.
//!
//! On shutdown the rules stay in place: a restart must not open the node.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::dataplane::Ruleset;
use crate::dataplane::br_netfilter::BrNetfilter;
use crate::engine::enforce::{Desired, Enforcer};
use crate::observe::flowlog::FlowLogger;
use crate::observe::metrics::{self, Metrics};
use crate::observe::nflog::LoggedPacket;
use crate::policy::compile::NodePlan;
use crate::policy::index::ClusterIndex;
use crate::source;

/// What arrives on the loop's channel.
#[derive(Debug)]
pub enum Input {
    Source(source::Event),
    /// Packets the kernel logged (`crate::observe::flowlog`).
    Flow(Vec<LoggedPacket>),
    /// SIGTERM or SIGINT.
    Shutdown(i32),
}

/// A ruleset to enforce and what it was built from; the loop adds when the change that led
/// to it arrived (see [`Desired`]).
#[derive(Debug)]
pub struct State {
    pub ruleset: Ruleset,
    /// What was read: the manifest fingerprint, or a summary of the API state.
    pub fingerprint: String,
    /// The plan the ruleset was built from (`--strict` judges open connections with it).
    pub plan: Option<Arc<NodePlan>>,
}

impl State {
    fn since(self, since: Instant) -> Desired {
        Desired {
            ruleset: self.ruleset,
            fingerprint: self.fingerprint,
            since,
            plan: self.plan,
        }
    }
}

/// Where the cluster state comes from, as the loop sees it.
pub trait StateSource {
    /// Folds in one change of a burst ([`source::Event::Update`] or [`source::Event::Reload`]).
    fn apply(&mut self, event: source::Event);

    /// Whether the state means anything yet (the API: every kind has been listed once). Until
    /// then nothing is enforced, the previous table stays in force, and resyncs are skipped.
    fn ready(&self) -> bool {
        true
    }

    /// After a burst (and once at start): the state to enforce, or `None` to keep the one in
    /// force (unchanged, unusable input, or not [`StateSource::ready`]). `nothing_applied`:
    /// no state has been applied yet, so even an unchanged one is wanted.
    fn settle(&mut self, nothing_applied: bool) -> Option<State>;

    /// At a periodic resync, when ready: a state to enforce if the one built incrementally
    /// turned out wrong.
    fn resync(&mut self) -> Option<State> {
        None
    }

    /// The plan and index that flow logs are resolved against.
    fn view(&self) -> (&NodePlan, &ClusterIndex);
}

/// What the loop needs of the enforcer ([`Enforcer`]; a stub in tests).
pub trait Enforce {
    /// Enforces `desired` now, replacing any pending retry.
    fn submit(&mut self, desired: Desired);
    /// Retries a failed apply if its time has come.
    fn tick(&mut self, now: Instant);
    /// Checks the kernel for drift and repairs it.
    fn resync(&mut self);
    /// When `tick` has work next (a retry, an unfinished `--strict` sweep), if anything.
    fn wake_at(&self, now: Instant) -> Option<Instant>;
    /// Number of successful applies so far.
    fn generation(&self) -> u64;
}

impl Enforce for Enforcer {
    fn submit(&mut self, desired: Desired) {
        Enforcer::submit(self, desired)
    }
    fn tick(&mut self, now: Instant) {
        Enforcer::tick(self, now)
    }
    fn resync(&mut self) {
        Enforcer::resync(self)
    }
    fn wake_at(&self, now: Instant) -> Option<Instant> {
        Enforcer::wake_at(self, now)
    }
    fn generation(&self) -> u64 {
        Enforcer::generation(self)
    }
}

/// The loop's timing.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Quiet period that ends a burst of changes.
    pub quiet: Duration,
    /// A burst is cut after this long even if changes keep coming.
    pub max_burst: Duration,
    /// Time between resyncs.
    pub resync_every: Duration,
}

/// What an event that arrives during a burst is, for [`until_quiet`].
#[derive(Debug, PartialEq, Eq)]
pub enum Burst {
    /// A change of the cluster state: the burst goes on.
    Change,
    /// Anything else (a flow log): handled, and the quiet period goes on.
    Other,
    Shutdown(i32),
}

/// Takes events until `quiet` passes without a change, or `max` in all; `take` handles each one
/// and says what it was. Only changes restart the quiet period: flow logs keep coming while pods
/// talk. Returns the signal when a shutdown arrives.
pub fn until_quiet<E>(
    rx: &Receiver<E>,
    quiet: Duration,
    max: Duration,
    mut take: impl FnMut(E) -> Burst,
) -> Option<i32> {
    let end = Instant::now() + max;
    let mut quiet_until = Instant::now() + quiet;
    loop {
        let wait = quiet_until
            .min(end)
            .saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return None;
        }
        match rx.recv_timeout(wait) {
            Ok(event) => match take(event) {
                Burst::Change => quiet_until = Instant::now() + quiet,
                Burst::Other => {}
                Burst::Shutdown(sig) => return Some(sig),
            },
            Err(_) => return None,
        }
    }
}

fn shut_down(signal: i32) -> anyhow::Result<()> {
    tracing::info!(signal, "shutting down; rules stay in place");
    Ok(())
}

/// The loop's state: the source, the enforcer and the deadlines.
pub struct EventLoop<S, E> {
    source: S,
    enforcer: E,
    flows: FlowLogger,
    metrics: Metrics,
    config: Config,
    next_resync: Instant,
    /// When the first change not enforced yet arrived: the policy implementation delay
    /// counts from it, across bursts while the source is not ready.
    since: Option<Instant>,
}

impl<S: StateSource, E: Enforce> EventLoop<S, E> {
    pub fn new(source: S, enforcer: E, metrics: Metrics, config: Config) -> Self {
        Self {
            source,
            enforcer,
            flows: FlowLogger::new(metrics.clone()),
            metrics,
            config,
            next_resync: Instant::now() + config.resync_every,
            since: None,
        }
    }

    /// Enforces what the source says until a shutdown signal (`Ok`) or until every sender
    /// of `rx` is gone (an error).
    pub fn run(&mut self, rx: &Receiver<Input>) -> anyhow::Result<()> {
        if self.source.ready() {
            self.since = Some(Instant::now());
            self.settle();
        }
        let Config {
            quiet, max_burst, ..
        } = self.config;
        loop {
            self.metrics.heartbeat();
            let now = Instant::now();
            // Here rather than on a receive timeout only: a steady stream of flow logs must
            // not starve the retries and resyncs.
            self.tick(now);
            let wake = self.wake(now);
            let input = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(input) => input,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
            };
            match self.take(input) {
                Burst::Change => {
                    if let Some(sig) = until_quiet(rx, quiet, max_burst, |i| self.take(i)) {
                        return shut_down(sig);
                    }
                    self.settle();
                }
                Burst::Other => {}
                Burst::Shutdown(sig) => return shut_down(sig),
            }
        }
    }

    /// Handles one input; a change is folded into the source, to be settled after its burst.
    fn take(&mut self, input: Input) -> Burst {
        match input {
            Input::Source(source::Event::Stopped(what)) => {
                tracing::error!("{what} stopped");
                self.metrics.observe_stopped(what);
                Burst::Other
            }
            Input::Source(change) => {
                self.since.get_or_insert_with(Instant::now);
                self.source.apply(change);
                Burst::Change
            }
            Input::Flow(packets) => {
                let (plan, index) = self.source.view();
                self.flows.log(&packets, plan, index);
                Burst::Other
            }
            Input::Shutdown(sig) => Burst::Shutdown(sig),
        }
    }

    /// After a burst: enforces what the source now asks for, if anything.
    fn settle(&mut self) {
        let state = self.source.settle(self.enforcer.generation() == 0);
        if !self.source.ready() {
            return; // the delay keeps counting from the first change
        }
        let since = self.since.take().unwrap_or_else(Instant::now);
        if let Some(state) = state {
            self.enforcer.submit(state.since(since));
        }
    }

    /// Runs what is due at `now`: a retry, a resync.
    fn tick(&mut self, now: Instant) {
        self.enforcer.tick(now);
        if self.next_resync > now {
            return;
        }
        self.next_resync = now + self.config.resync_every;
        if !self.source.ready() {
            return;
        }
        if let Some(state) = self.source.resync() {
            self.enforcer.submit(state.since(now));
        }
        self.metrics.observe_br_netfilter(&BrNetfilter::probe());
        self.enforcer.resync();
    }

    /// When the loop must wake up at the latest, if nothing arrives.
    fn wake(&self, now: Instant) -> Instant {
        self.enforcer
            .wake_at(now)
            .map_or(self.next_resync, |r| r.min(self.next_resync))
            .min(now + metrics::HEARTBEAT_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::dataplane::Options;
    use crate::source::{Change, Event, Update};

    /// A source that counts what it is asked and answers a ruleset whenever it has changes.
    #[derive(Default)]
    struct Stub {
        ready: bool,
        applied: Vec<Event>,
        /// Changes not settled yet.
        changed: bool,
        settled: usize,
        /// What the next resync answers.
        wrong: bool,
        plan: NodePlan,
        index: ClusterIndex,
    }

    fn state(fingerprint: &str) -> State {
        State {
            ruleset: Ruleset::build(&NodePlan::default(), Options::default()),
            fingerprint: fingerprint.into(),
            plan: None,
        }
    }

    impl StateSource for Stub {
        fn apply(&mut self, event: Event) {
            self.applied.push(event);
            self.changed = true;
        }
        fn ready(&self) -> bool {
            self.ready
        }
        fn settle(&mut self, nothing_applied: bool) -> Option<State> {
            self.settled += 1;
            let changed = std::mem::take(&mut self.changed);
            (self.ready && (changed || nothing_applied))
                .then(|| state(&format!("settle {}", self.applied.len())))
        }
        fn resync(&mut self) -> Option<State> {
            std::mem::take(&mut self.wrong).then(|| state("resync"))
        }
        fn view(&self) -> (&NodePlan, &ClusterIndex) {
            (&self.plan, &self.index)
        }
    }

    /// An enforcer that records what it is given.
    #[derive(Default)]
    struct Recorder {
        submitted: Vec<Desired>,
        ticks: usize,
        resyncs: usize,
        retry_at: Option<Instant>,
    }

    impl Enforce for Recorder {
        fn submit(&mut self, desired: Desired) {
            self.submitted.push(desired);
        }
        fn tick(&mut self, _now: Instant) {
            self.ticks += 1;
        }
        fn resync(&mut self) {
            self.resyncs += 1;
        }
        fn wake_at(&self, _now: Instant) -> Option<Instant> {
            self.retry_at
        }
        fn generation(&self) -> u64 {
            self.submitted.len() as u64
        }
    }

    const CONFIG: Config = Config {
        quiet: Duration::from_millis(5),
        max_burst: Duration::from_secs(1),
        resync_every: Duration::from_secs(30),
    };

    fn event_loop(ready: bool) -> EventLoop<Stub, Recorder> {
        let source = Stub {
            ready,
            ..Stub::default()
        };
        EventLoop::new(source, Recorder::default(), Metrics::new(), CONFIG)
    }

    fn fingerprints(l: &EventLoop<Stub, Recorder>) -> Vec<&str> {
        l.enforcer
            .submitted
            .iter()
            .map(|d| d.fingerprint.as_str())
            .collect()
    }

    fn update() -> Input {
        Input::Source(Event::Update(Update::Pod(Change::Relisted(vec![].into()))))
    }

    #[test]
    fn a_burst_is_settled_once_and_flow_logs_do_not_count_as_changes() {
        let (tx, rx) = mpsc::channel();
        for input in [
            Input::Source(Event::Reload),
            Input::Flow(vec![]),
            Input::Source(Event::Reload),
            Input::Source(Event::Reload),
        ] {
            tx.send(input).expect("the receiver is alive");
        }
        // A channel that closes ends the burst, then the loop.
        drop(tx);
        let mut l = event_loop(true);
        let err = l.run(&rx).expect_err("the channel closed");
        assert!(err.to_string().contains("channel closed"), "{err}");
        assert_eq!(l.source.applied, vec![Event::Reload; 3]);
        // Once at start, once after the burst.
        assert_eq!(l.source.settled, 2);
        assert_eq!(fingerprints(&l), ["settle 0", "settle 3"]);
    }

    #[test]
    fn a_shutdown_ends_the_loop_without_settling_the_burst_it_cuts() {
        let (tx, rx) = mpsc::channel();
        tx.send(Input::Source(Event::Reload)).expect("alive");
        tx.send(Input::Shutdown(15)).expect("alive");
        let mut l = event_loop(true);
        l.run(&rx).expect("a signal is a clean exit");
        assert_eq!(l.source.applied.len(), 1);
        assert_eq!(fingerprints(&l), ["settle 0"]);
    }

    #[test]
    fn nothing_is_enforced_until_ready_and_the_delay_counts_from_the_first_change() {
        let mut l = event_loop(false);
        let before = Instant::now();
        assert_eq!(l.take(update()), Burst::Change);
        l.settle();
        assert!(l.enforcer.submitted.is_empty());
        let between = Instant::now();
        l.source.ready = true;
        assert_eq!(l.take(update()), Burst::Change);
        l.settle();
        let [desired] = l.enforcer.submitted.as_slice() else {
            panic!("one submit: {:?}", fingerprints(&l));
        };
        assert!(before <= desired.since && desired.since <= between);
        // Settled: the next change starts its own delay.
        let after = Instant::now();
        l.take(update());
        l.settle();
        assert!(l.enforcer.submitted[1].since >= after);
    }

    #[test]
    fn an_unchanged_state_is_still_submitted_while_nothing_is_applied() {
        let mut l = event_loop(true);
        l.settle();
        l.settle();
        assert_eq!(fingerprints(&l), ["settle 0"]);
    }

    #[test]
    fn resyncs_wait_for_their_time_and_for_a_ready_source() {
        let mut l = event_loop(false);
        let now = Instant::now();
        l.tick(now);
        assert_eq!((l.enforcer.ticks, l.enforcer.resyncs), (1, 0));
        // Due but not ready: skipped, and not due again at once (no busy loop).
        let later = now + CONFIG.resync_every;
        l.tick(later);
        assert_eq!(l.enforcer.resyncs, 0);
        assert!(l.wake(later) > later);
        l.source.ready = true;
        l.source.wrong = true;
        let much_later = later + CONFIG.resync_every;
        l.tick(much_later);
        assert_eq!(l.enforcer.resyncs, 1);
        assert_eq!(fingerprints(&l), ["resync"]);
        assert_eq!(l.enforcer.submitted[0].since, much_later);
    }

    #[test]
    fn the_loop_wakes_for_a_retry_and_at_least_every_heartbeat() {
        let mut l = event_loop(true);
        let now = Instant::now();
        assert_eq!(l.wake(now), now + metrics::HEARTBEAT_EVERY);
        let retry = now + Duration::from_millis(200);
        l.enforcer.retry_at = Some(retry);
        assert_eq!(l.wake(now), retry);
    }

    #[test]
    fn stopped_watches_make_the_node_unready_and_not_live() {
        let mut l = event_loop(true);
        let applied = state("applied");
        let stats = crate::dataplane::Stats::default();
        l.metrics
            .observe_apply(Instant::now(), &applied.ruleset, &stats);
        assert_eq!(l.metrics.readyz(), Ok(()));
        assert_eq!(
            l.take(Input::Source(Event::Stopped("the API watches"))),
            Burst::Other
        );
        let err = l.metrics.readyz().expect_err("not ready");
        assert!(err.contains("watches stopped"), "{err}");
        // Nothing restarts the watchers but a new process: liveness fails too.
        let err = l.metrics.livez().expect_err("not live");
        assert!(err.contains("the API watches stopped"), "{err}");
        assert!(l.source.applied.is_empty());
    }

    #[test]
    fn until_quiet_returns_the_signal_of_a_shutdown() {
        let (tx, rx) = mpsc::channel();
        tx.send(1).expect("alive");
        tx.send(2).expect("alive");
        let mut seen = Vec::new();
        let sig = until_quiet(&rx, Duration::from_secs(5), Duration::from_secs(5), |n| {
            seen.push(n);
            if n == 2 {
                Burst::Shutdown(15)
            } else {
                Burst::Change
            }
        });
        assert_eq!((sig, seen), (Some(15), vec![1, 2]));
    }
}
