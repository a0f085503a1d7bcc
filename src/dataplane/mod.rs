//! The dataplane: programs a compiled `NodePlan` into the kernel's nftables, as table
//! `inet nftpol`, over netlink (nftnl + mnl; no `nft` binary at run time).
//!
//! - [`ruleset`]: the pure model of the table (sets, verdict maps, chains) built from a plan.
//! - [`decide`]: a ClusterNetworkPolicy tier's ordered rules flattened into decision maps.
//! - [`render`]: the same model as nft text, exactly as `nft list table inet nftpol` prints it.
//! - [`program`]: a ruleset, or the difference between two, as one labelled nftnl batch.
//! - [`sys`]: the `unsafe` libnftnl calls the safe nftnl API lacks, and the raw parts of the
//!   netlink socket: the only `unsafe` code of the dataplane.
//! - [`netlink`]: the transport (one `sendmsg`, ACKs only on END) and read-back dumps.
//! - [`shape`]: rules parsed into expressions and attributes, compared by structure for the
//!   drift check.
//! - [`dns`]: `domainNames` rules' learned-address sets, the hold of DNS answers in an
//!   NFQUEUE and the learning transaction.
//! - [`conntrack`]: the conntrack table through ctnetlink (`--strict` cuts connections).
//! - [`br_netfilter`]: the bridge sysctl check without which same-bridge traffic bypasses us.
//! - [`kernel`]: the minimum kernel (5.7: concatenated interval sets), checked at start.
//! - [`Driver`]: the seam between the enforcer and the kernel, implemented by [`Dataplane`]
//!   (netlink) and, in unit tests, by an in-memory fake (`fake`).
//!
//! Every change is one transaction: the kernel applies all of it or none, so a rejected batch
//! leaves the previous ruleset in force.

// Only the FFI module may hold `unsafe` code (each block with a `// SAFETY:` comment).
#![deny(unsafe_code)]

pub mod br_netfilter;
pub mod conntrack;
pub mod decide;
pub mod dns;
#[cfg(test)]
pub mod fake;
pub mod kernel;
pub mod netlink;
pub mod program;
pub mod render;
pub mod ruleset;
pub mod shape;
#[allow(unsafe_code)]
pub mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::time::{Duration, Instant};

use nftnl::nftnl_sys::libc;

use netlink::{Labels, NlSocket};
use program::{BadName, Tx};
pub use render::render;
pub use ruleset::{Options, Ruleset};
use sys::DumpKind;

/// One object the kernel refused, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub object: String,
    pub errno: i32,
    pub detail: Option<String>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, netlink::strerror(self.errno))?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the kernel rejected the transaction, nothing was changed: {} ({} error(s) in all)",
        .0.first().map(ToString::to_string).unwrap_or_default(),
        .0.len()
    )]
    Rejected(Vec<Rejected>),
    #[error("the kernel did not confirm the commit of the transaction")]
    NotCommitted,
    #[error(transparent)]
    BadName(#[from] BadName),
}

impl DataplaneError {
    /// The named objects of a rejected transaction.
    pub fn rejected(&self) -> &[Rejected] {
        match self {
            DataplaneError::Rejected(r) => r,
            _ => &[],
        }
    }
}

/// How a ruleset was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyKind {
    Full,
    Diff,
    /// Nothing changed: no transaction.
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub kind: ApplyKind,
    pub messages: usize,
    pub bytes: usize,
    /// Time spent building the batch.
    pub build: Duration,
    /// Time from sendmsg to the commit confirmation.
    pub kernel: Duration,
}

/// Counters for logs and metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub full_applies: u64,
    pub diff_applies: u64,
    pub failures: u64,
    pub drift_repairs: u64,
    /// Batches sent to the kernel, committed or not (one apply may send several: a rejected
    /// diff is retried as a full replace).
    pub transactions: u64,
    /// Batches the kernel rejected, or that failed on the socket or went unconfirmed.
    pub transaction_errors: u64,
}

/// What differs between the kernel and the last applied ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub problems: Vec<String>,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// What the enforcer (`crate::engine::enforce`) needs from a dataplane, after netavark's
/// `FirewallDriver`: [`Dataplane`] programs the kernel over netlink; the unit tests of the
/// enforcer put an in-memory fake in its place. The contracts are [`Dataplane`]'s.
pub trait Driver: Send {
    /// Applies `ruleset`: a diff against the last applied one, a full replace the first time
    /// or after a rejected diff ([`Dataplane::apply`]).
    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError>;

    /// Forgets the last applied ruleset, so that the next apply replaces the table.
    fn invalidate(&mut self);

    /// What differs between the kernel and `ruleset` (the last committed one), if anything.
    fn check_drift(&self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError>;

    /// Checks drift from `ruleset` and, when found, replaces the table with it (the next
    /// apply is then a diff from it).
    fn repair_drift(&mut self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError>;

    fn stats(&self) -> Stats;

    /// Build and commit time of each transaction committed since the last call.
    fn take_commit_times(&mut self) -> Vec<Duration>;
}

impl Driver for Dataplane {
    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        Dataplane::apply(self, ruleset)
    }

    fn invalidate(&mut self) {
        Dataplane::invalidate(self)
    }

    fn check_drift(&self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError> {
        Dataplane::check_drift_from(self, ruleset)
    }

    fn repair_drift(&mut self, ruleset: &Ruleset) -> Result<Option<Drift>, DataplaneError> {
        Dataplane::repair_drift_toward(self, ruleset)
    }

    fn stats(&self) -> Stats {
        Dataplane::stats(self).clone()
    }

    fn take_commit_times(&mut self) -> Vec<Duration> {
        Dataplane::take_commit_times(self)
    }
}

/// The programmer of table `inet nftpol` in one network namespace.
pub struct Dataplane {
    sock: NlSocket,
    last: Option<Ruleset>,
    stats: Stats,
    /// Build and commit time of each transaction committed since the last
    /// [`Dataplane::take_commit_times`], at most [`MAX_COMMIT_TIMES`].
    commit_times: Vec<Duration>,
}

/// Bounds the commit times kept for a caller that never takes them.
const MAX_COMMIT_TIMES: usize = 1024;

const INET: u16 = libc::NFPROTO_INET as u16;

impl Dataplane {
    /// Opens the netlink socket in the calling thread's network namespace; everything this
    /// dataplane does happens there, whichever thread calls it later.
    pub fn new() -> Result<Self, DataplaneError> {
        Ok(Self {
            sock: NlSocket::open()?,
            last: None,
            stats: Stats::default(),
            commit_times: Vec::new(),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How long each transaction committed since the last call took (batch build and kernel
    /// commit), oldest first: an apply may commit none, one or (after a rejected diff) two,
    /// and a drift repair one.
    pub fn take_commit_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.commit_times)
    }

    /// The ruleset of the last committed transaction.
    pub fn last_applied(&self) -> Option<&Ruleset> {
        self.last.as_ref()
    }

    /// Forgets the last applied ruleset, so that the next [`Dataplane::apply`] replaces the table.
    pub fn invalidate(&mut self) {
        self.last = None;
    }

    fn commit(
        &mut self,
        tx: Tx,
        kind: ApplyKind,
        build: Duration,
    ) -> Result<ApplyReport, DataplaneError> {
        let messages = tx.messages();
        let (batch, labels) = tx.finish();
        self.stats.transactions += 1;
        let t0 = Instant::now();
        let reply = self.sock.send_batch(&batch).inspect_err(|_| {
            self.stats.transaction_errors += 1;
        })?;
        let kernel = t0.elapsed();
        if !reply.errors.is_empty() {
            self.stats.transaction_errors += 1;
            let seqs = batch.sequence_numbers();
            return Err(DataplaneError::Rejected(name_errors(
                &labels,
                &seqs,
                &reply.errors,
            )));
        }
        let expects_end_ack = (seqs_len(&batch) as usize) == labels.len() + 2;
        if expects_end_ack && !reply.end_acked {
            self.stats.transaction_errors += 1;
            return Err(DataplaneError::NotCommitted);
        }
        if self.commit_times.len() < MAX_COMMIT_TIMES {
            self.commit_times.push(build + kernel);
        }
        Ok(ApplyReport {
            kind,
            messages,
            bytes: reply.bytes,
            build,
            kernel,
        })
    }

    /// Sends a transaction; when the kernel rejects a message that carries several elements,
    /// sends it again with one element per message so that the error names the element (the
    /// retry fails the same way and changes nothing, or commits the intended state).
    fn run(
        &mut self,
        build: impl Fn(bool) -> Result<Option<Tx>, BadName>,
        kind: ApplyKind,
    ) -> Result<Option<ApplyReport>, DataplaneError> {
        let t0 = Instant::now();
        let Some(tx) = build(false)? else {
            return Ok(None);
        };
        let built = t0.elapsed();
        match self.commit(tx, kind, built) {
            Err(DataplaneError::Rejected(r)) if r.iter().any(|e| e.object.contains(" more")) => {
                let Some(tx) = build(true)? else {
                    return Err(DataplaneError::Rejected(r));
                };
                self.commit(tx, kind, built).map(Some)
            }
            other => other.map(Some),
        }
    }

    /// Replaces the whole table with `ruleset` in one transaction.
    pub fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        let res = self.run(|pe| program::full(ruleset, pe).map(Some), ApplyKind::Full);
        // `program::full` always builds a transaction, so `Ok(None)` cannot happen.
        match res.and_then(|r| r.ok_or(DataplaneError::NotCommitted)) {
            Ok(report) => {
                self.stats.full_applies += 1;
                self.last = Some(ruleset.clone());
                Ok(report)
            }
            Err(e) => {
                self.stats.failures += 1;
                Err(e)
            }
        }
    }

    /// Applies only what changed from `old` (which must be what the kernel holds) to `new`, in
    /// one transaction; replaces the table when the shape changed.
    pub fn apply_diff(
        &mut self,
        old: &Ruleset,
        new: &Ruleset,
    ) -> Result<ApplyReport, DataplaneError> {
        if old == new {
            self.last = Some(new.clone());
            return Ok(ApplyReport {
                kind: ApplyKind::Unchanged,
                messages: 0,
                bytes: 0,
                build: Duration::ZERO,
                kernel: Duration::ZERO,
            });
        }
        match self.run(|pe| program::diff(old, new, pe), ApplyKind::Diff) {
            Ok(Some(report)) => {
                self.stats.diff_applies += 1;
                self.last = Some(new.clone());
                Ok(report)
            }
            Ok(None) => self.apply_full(new),
            Err(e) => {
                self.stats.failures += 1;
                Err(e)
            }
        }
    }

    /// Applies `ruleset`: a diff against the last applied one, a full replace the first time.
    /// A rejected diff is retried once as a full replace (which also repairs unnoticed drift).
    pub fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        match self.last.clone() {
            None => self.apply_full(ruleset),
            Some(old) => match self.apply_diff(&old, ruleset) {
                Ok(r) => Ok(r),
                Err(DataplaneError::Rejected(r)) => {
                    tracing::warn!(
                        error = %r.first().map(ToString::to_string).unwrap_or_default(),
                        "incremental update rejected; replacing the whole table"
                    );
                    self.apply_full(ruleset)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Removes table `inet nftpol` (no error when it does not exist).
    pub fn delete_table(&mut self) -> Result<(), DataplaneError> {
        let mut tx = Tx::new(false);
        tx.delete_table();
        self.commit(tx, ApplyKind::Full, Duration::ZERO)?;
        self.last = None;
        Ok(())
    }

    /// Whether table `inet nftpol` exists.
    pub fn table_exists(&self) -> Result<bool, DataplaneError> {
        Ok(self.sock.table_exists(INET, c"nftpol")?)
    }

    /// Compares the kernel with the last applied ruleset: chains, every rule's expressions by
    /// structure ([`shape`]), sets and maps, and every element. `None` when they agree (or nothing was applied yet).
    pub fn check_drift(&self) -> Result<Option<Drift>, DataplaneError> {
        match &self.last {
            Some(last) => self.check_drift_from(last),
            None => Ok(None),
        }
    }

    /// Compares the kernel with `last`, as [`Dataplane::check_drift`] does with the last
    /// applied ruleset.
    pub fn check_drift_from(&self, last: &Ruleset) -> Result<Option<Drift>, DataplaneError> {
        let mut problems = Vec::new();
        let table = c"nftpol";
        if !self.sock.table_exists(INET, table)? {
            return Ok(Some(Drift {
                problems: vec!["table inet nftpol is missing".into()],
            }));
        }
        let want_rules = program::expected_rules(last)?;
        let chains: BTreeSet<String> = self
            .sock
            .dump_objects(DumpKind::Chains, INET, table)?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let mut have_rules: BTreeMap<String, Vec<shape::RuleShape>> = BTreeMap::new();
        for rule in self.sock.dump_rules(INET, table)? {
            have_rules.entry(rule.chain.clone()).or_default().push(rule);
        }
        compare_names(
            "chain",
            want_rules.keys().cloned().collect(),
            &chains,
            &mut problems,
        );
        for (chain, want) in &want_rules {
            let have = have_rules.get(chain).map(Vec::as_slice).unwrap_or(&[]);
            if !chains.contains(chain) {
                continue;
            }
            if have.len() != want.len() {
                problems.push(format!(
                    "chain {chain} has {} rules, expected {}",
                    have.len(),
                    want.len()
                ));
            } else if let Some((i, e)) = have
                .iter()
                .zip(want)
                .enumerate()
                .find_map(|(i, (h, w))| shape::compare(w, h).err().map(|e| (i, e)))
            {
                problems.push(format!("chain {chain} rule #{i} differs: {e}"));
            }
        }
        let expected = program::expected_elements(last)?;
        let sets: BTreeSet<String> = self
            .sock
            .dump_objects(DumpKind::Sets, INET, table)?
            .into_iter()
            .map(|o| o.name)
            .collect();
        compare_names(
            "set",
            expected.iter().map(|(n, _)| n.clone()).collect(),
            &sets,
            &mut problems,
        );
        for (name, want) in &expected {
            let Some(want) = want else { continue };
            if !sets.contains(name) {
                continue;
            }
            let cname = CString::new(name.as_str()).map_err(|_| BadName(name.clone()))?;
            let mut have = self.sock.dump_elements(INET, table, &cname)?;
            for e in &mut have {
                // The kernel echoes flags we never set on pipapo/hash elements as absent;
                // compare only what identifies an element.
                e.flags &= sys::ELEM_INTERVAL_END;
            }
            have.sort();
            if &have != want {
                let missing = want.iter().filter(|e| !have.contains(e)).count();
                let extra = have.iter().filter(|e| !want.contains(e)).count();
                problems.push(format!(
                    "set {name}: {missing} element(s) missing, {extra} unexpected"
                ));
            }
        }
        Ok((!problems.is_empty()).then_some(Drift { problems }))
    }

    /// Checks drift and, when found, replaces the table with the last applied ruleset.
    pub fn repair_drift(&mut self) -> Result<Option<Drift>, DataplaneError> {
        match self.last.clone() {
            Some(last) => self.repair_drift_toward(&last),
            None => Ok(None),
        }
    }

    /// Checks drift from `ruleset` and, when found, replaces the table with it. The enforcer
    /// repairs toward the last ruleset it committed, also while a newer one keeps failing
    /// (when [`Dataplane::invalidate`] may have dropped the last applied one).
    pub fn repair_drift_toward(
        &mut self,
        ruleset: &Ruleset,
    ) -> Result<Option<Drift>, DataplaneError> {
        let drift = self.check_drift_from(ruleset)?;
        if drift.is_some() {
            self.apply_full(ruleset)?;
            self.stats.drift_repairs += 1;
        }
        Ok(drift)
    }
}

/// A read-only view of the packet counters of table `inet nftpol`, on its own netlink socket so
/// that a metrics scrape never waits for (or interleaves with) a transaction of the
/// [`Dataplane`].
pub struct CounterReader {
    sock: NlSocket,
}

impl CounterReader {
    /// Opens the socket in the calling thread's network namespace, like [`Dataplane::new`].
    pub fn new() -> Result<Self, DataplaneError> {
        Ok(Self {
            sock: NlSocket::open()?,
        })
    }

    /// The counter ending every per-pod chain (of drops, or in audit mode of would-be drops);
    /// empty when the table does not exist yet.
    pub fn drop_counters(&self) -> Result<Vec<sys::RuleCounter>, DataplaneError> {
        match self.sock.dump_rule_counters(INET, c"nftpol") {
            Ok(c) => Ok(c),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

fn seqs_len(batch: &nftnl::FinalizedBatch) -> u32 {
    let s = batch.sequence_numbers();
    s.end - s.start
}

fn name_errors(
    labels: &Labels,
    seqs: &std::ops::Range<u32>,
    errors: &[netlink::MsgError],
) -> Vec<Rejected> {
    errors
        .iter()
        .map(|e| Rejected {
            object: labels.resolve(seqs, e.seq),
            errno: e.errno,
            detail: e.detail.clone(),
        })
        .collect()
}

fn compare_names(
    what: &str,
    want: BTreeSet<String>,
    have: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    for n in want.difference(have) {
        problems.push(format!("{what} {n} is missing"));
    }
    for n in have.difference(&want) {
        problems.push(format!("unexpected {what} {n}"));
    }
}

#[cfg(test)]
mod tests {
    fn assert_send<T: Send>() {}

    #[test]
    fn dataplane_can_move_to_another_thread() {
        assert_send::<super::Dataplane>();
    }
}
