//! An in-memory [`Driver`] for unit tests: the "kernel" is a `Ruleset`, and a test scripts
//! what goes wrong (reject or lose the next transactions, flush the table behind our back) and
//! reads back every transaction it was sent.
//!
//! It keeps [`Dataplane`](super::Dataplane)'s contract and counters: the first apply (or the
//! first after [`Driver::invalidate`]) is a full replace, an unchanged ruleset sends nothing, a
//! rejected diff is retried once as a full replace, and a failed transaction changes nothing.
//! One simplification: a diff is rejected exactly when the kernel does not hold the ruleset it
//! was computed from (the real kernel rejects most such diffs, not all).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{ApplyKind, ApplyReport, DataplaneError, Drift, Driver, Rejected, Ruleset, Stats};

/// How a scripted transaction fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The kernel rejects the batch ([`DataplaneError::Rejected`]): nothing changes.
    Reject,
    /// The socket fails ([`DataplaneError::Io`]): nothing changes in the fake.
    Io,
}

/// One batch the fake kernel received.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub kind: ApplyKind,
    pub ruleset: Ruleset,
    pub committed: bool,
}

#[derive(Default)]
pub struct State {
    /// What the kernel holds; `None`: no table.
    pub kernel: Option<Ruleset>,
    /// What the driver last committed (`Dataplane`'s `last`).
    pub last: Option<Ruleset>,
    pub stats: Stats,
    commit_times: Vec<Duration>,
    /// Every batch sent, oldest first.
    pub transactions: Vec<Transaction>,
    /// Failures of the next batches, one per batch.
    pub script: VecDeque<Failure>,
    /// Drift checks run (by `check_drift` or `repair_drift`).
    pub drift_checks: u64,
}

/// A cloneable handle: the enforcer owns one clone, the test keeps another.
#[derive(Clone, Default)]
pub struct FakeDataplane {
    state: Arc<Mutex<State>>,
}

impl FakeDataplane {
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock fails anyway; keep the state readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` batches fail with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.state().script.extend(std::iter::repeat_n(failure, n));
    }

    /// `nft flush ruleset` behind our back.
    pub fn flush(&self) {
        self.state().kernel = None;
    }

    /// Kinds of the batches sent so far, with whether each committed.
    pub fn sent(&self) -> Vec<(ApplyKind, bool)> {
        self.state()
            .transactions
            .iter()
            .map(|t| (t.kind, t.committed))
            .collect()
    }

    /// The ruleset the kernel holds.
    pub fn kernel(&self) -> Option<Ruleset> {
        self.state().kernel.clone()
    }
}

impl State {
    fn commit(
        &mut self,
        kind: ApplyKind,
        ruleset: &Ruleset,
    ) -> Result<ApplyReport, DataplaneError> {
        self.stats.transactions += 1;
        let failure = self.script.pop_front();
        self.transactions.push(Transaction {
            kind,
            ruleset: ruleset.clone(),
            committed: failure.is_none(),
        });
        match failure {
            Some(Failure::Reject) => {
                self.stats.transaction_errors += 1;
                return Err(rejected("scripted rejection"));
            }
            Some(Failure::Io) => {
                self.stats.transaction_errors += 1;
                return Err(DataplaneError::Io(std::io::Error::from_raw_os_error(
                    libc::ENOBUFS,
                )));
            }
            None => {}
        }
        self.kernel = Some(ruleset.clone());
        let took = Duration::from_micros(self.transactions.len() as u64);
        self.commit_times.push(took);
        Ok(report(kind))
    }

    fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        match self.commit(ApplyKind::Full, ruleset) {
            Ok(r) => {
                self.stats.full_applies += 1;
                self.last = Some(ruleset.clone());
                Ok(r)
            }
            Err(e) => {
                self.stats.failures += 1;
                Err(e)
            }
        }
    }

    fn apply_diff(&mut self, old: &Ruleset, new: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        if old == new {
            self.last = Some(new.clone());
            return Ok(report(ApplyKind::Unchanged));
        }
        let res = if self.kernel.as_ref() != Some(old) {
            // What the kernel does with a diff against a table it does not hold.
            self.stats.transactions += 1;
            self.stats.transaction_errors += 1;
            self.transactions.push(Transaction {
                kind: ApplyKind::Diff,
                ruleset: new.clone(),
                committed: false,
            });
            Err(rejected("diff against a drifted table"))
        } else {
            self.commit(ApplyKind::Diff, new)
        };
        match res {
            Ok(r) => {
                self.stats.diff_applies += 1;
                self.last = Some(new.clone());
                Ok(r)
            }
            Err(e) => {
                self.stats.failures += 1;
                Err(e)
            }
        }
    }

    fn drift(&mut self, last: &Ruleset) -> Option<Drift> {
        self.drift_checks += 1;
        match &self.kernel {
            None => Some(Drift {
                problems: vec!["table inet nftpol is missing".into()],
            }),
            Some(k) if k != last => Some(Drift {
                problems: vec!["the table differs".into()],
            }),
            Some(_) => None,
        }
    }
}

fn rejected(object: &str) -> DataplaneError {
    DataplaneError::Rejected(vec![Rejected {
        object: object.into(),
        errno: libc::EINVAL,
        detail: None,
    }])
}

fn report(kind: ApplyKind) -> ApplyReport {
    ApplyReport {
        kind,
        messages: 0,
        bytes: 0,
        build: Duration::ZERO,
        kernel: Duration::ZERO,
    }
}

impl Driver for FakeDataplane {
    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        let mut s = self.state();
        match s.last.clone() {
            None => s.apply_full(ruleset),
            Some(old) => match s.apply_diff(&old, ruleset) {
                Err(DataplaneError::Rejected(_)) => s.apply_full(ruleset),
                other => other,
            },
        }
    }

    fn invalidate(&mut self) {
        self.state().last = None;
    }

    fn check_drift(&self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError> {
        Ok(self.state().drift(ruleset))
    }

    fn repair_drift(&mut self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError> {
        let mut s = self.state();
        let drift = s.drift(ruleset);
        if drift.is_some() {
            s.apply_full(ruleset)?;
            s.stats.drift_repairs += 1;
        }
        Ok(drift)
    }

    fn stats(&self) -> Stats {
        self.state().stats.clone()
    }

    fn take_commit_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.state().commit_times)
    }
}
