//! The enforcer: owns the dataplane and brings the kernel to the desired ruleset, whatever the
//! source of that ruleset (a manifest folder or the Kubernetes API).
//!
//! Failure policy: a transaction the kernel rejects leaves the previous ruleset in force (the
//! kernel applies a batch whole or not at all) and is retried with exponential backoff; after an
//! I/O error the kernel may hold anything, so the retry replaces the whole table. A periodic
//! resync compares the kernel with what was applied and repairs drift (someone ran
//! `nft flush ruleset`) with a full replace. On shutdown the rules stay in place: a restarting
//! daemon must not open the node.
//!
//! It also records every commit, failure and repair in the metrics (`crate::observe::metrics`), and
//! with `--strict` cuts the open connections a new plan denies (`crate::dataplane::conntrack`).
//!
//! With `--strict`, every apply that changed the ruleset is followed by a conntrack sweep: the
//! entries of connections the new plan no longer allows are deleted, so their next packet is
//! judged as new (and dropped) instead of riding on `ct state established accept`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::conntrack::{self, Conntrack, ConntrackError};
use crate::dataplane::{ApplyKind, Dataplane, DataplaneError, Ruleset};
use crate::observe::metrics::Metrics;
use crate::policy::compile::NodePlan;
use crate::policy::model::Protocol;
use crate::policy::verdict;

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

#[derive(serde::Serialize)]
struct Status<'a> {
    generation: u64,
    fingerprint: &'a str,
    applied_at_unix_ms: u128,
}

/// Writes the status file atomically (tmp + rename): `{"generation", "fingerprint",
/// "applied_at_unix_ms"}`. Tests and the testbed wait on it.
fn write_status(path: &Path, generation: u64, fingerprint: &str) -> anyhow::Result<()> {
    let status = Status {
        generation,
        fingerprint,
        applied_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec(&status)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

pub struct Enforcer {
    dp: Dataplane,
    status_file: Option<PathBuf>,
    generation: u64,
    /// Wanted but not yet committed (a failed apply waits here for its retry).
    pending: Option<Desired>,
    backoff: Duration,
    retry_at: Option<Instant>,
    metrics: Option<Metrics>,
    /// `--strict`: the ctnetlink socket that cuts connections the plan no longer allows.
    conntrack: Option<Conntrack>,
    /// Connections cut so far.
    cut: u64,
}

impl Enforcer {
    /// Opens the dataplane in the calling thread's network namespace.
    pub fn new(status_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let dp = Dataplane::new().context("opening the netfilter netlink socket")?;
        Ok(Self {
            dp,
            status_file,
            generation: 0,
            pending: None,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            metrics: None,
            conntrack: None,
            cut: 0,
        })
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

    /// Enforces `desired` now (replacing any pending retry with the newer state).
    pub fn submit(&mut self, desired: Desired) {
        self.pending = Some(desired);
        self.backoff = FIRST_BACKOFF;
        self.try_apply();
    }

    /// Retries a failed apply if its time has come.
    pub fn tick(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
            self.try_apply();
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
                    m.observe_apply(desired.since, &desired.ruleset, self.dp.stats());
                }
                // Audit mode drops nothing, so it cuts nothing either.
                if report.kind != ApplyKind::Unchanged
                    && !desired.ruleset.options.audit
                    && let (Some(ct), Some(plan)) = (self.conntrack.as_mut(), &desired.plan)
                {
                    let police_node = desired.ruleset.options.police_node_traffic;
                    match cut_denied(ct, plan, police_node) {
                        Ok(n) => {
                            self.cut += n;
                            if n > 0 {
                                tracing::info!(
                                    cut = n,
                                    total = self.cut,
                                    "cut {n} connections no longer allowed"
                                );
                            }
                        }
                        // The ruleset is in force; only the cut is missing. The next change
                        // sweeps again.
                        Err(e) => tracing::error!("strict: cutting connections failed: {e}"),
                    }
                }
                if let Some(path) = &self.status_file
                    && let Err(e) = write_status(path, self.generation, &desired.fingerprint)
                {
                    tracing::error!("status file: {e:#}");
                }
                self.pending = None;
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                for r in e.rejected() {
                    tracing::error!(object = %r.object, "rejected: {r}");
                }
                tracing::error!(
                    failures = self.dp.stats().failures,
                    retry_in_ms = self.backoff.as_millis() as u64,
                    "apply failed, the previous ruleset stays in force: {e}"
                );
                if let Some(m) = &self.metrics {
                    m.observe_commits(&self.dp.take_commit_times());
                    m.observe_failure(&e, self.dp.stats());
                }
                if !matches!(e, DataplaneError::Rejected(_)) {
                    self.dp.invalidate();
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Checks the kernel against the last applied ruleset and repairs drift.
    pub fn resync(&mut self) {
        if self.pending.is_some() {
            return; // a retry is scheduled; it replaces the table anyway
        }
        match self.dp.check_drift() {
            Ok(None) => tracing::debug!("no drift"),
            Ok(Some(drift)) => {
                tracing::warn!("drift detected, replacing the table: {drift}");
                match self.dp.repair_drift() {
                    Ok(_) => {
                        tracing::info!(repairs = self.dp.stats().drift_repairs, "drift repaired")
                    }
                    Err(e) => tracing::error!("drift repair failed: {e}"),
                }
            }
            Err(e) => tracing::error!("drift check failed: {e}"),
        }
        if let Some(m) = &self.metrics {
            m.observe_commits(&self.dp.take_commit_times());
            m.observe_stats(self.dp.stats());
        }
    }
}

/// Deletes the conntrack entries of TCP, UDP and SCTP connections to or from a local endpoint
/// that `plan` does not allow as new connections; returns how many were deleted. Connections
/// the node opened to its pods are left alone unless `police_node` (nothing polices them, so a
/// cut one would only come back with its next packet).
fn cut_denied(
    ct: &mut Conntrack,
    plan: &NodePlan,
    police_node: bool,
) -> Result<u64, ConntrackError> {
    let node: HashSet<IpAddr> = if police_node {
        HashSet::new()
    } else {
        conntrack::local_addresses()?
    };
    let local: HashSet<IpAddr> = plan
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    if local.is_empty() {
        return Ok(0);
    }
    let mut cut = 0;
    for entry in ct.dump()? {
        let (src, dst, proto, port) = entry.judged();
        let protocol = match proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            _ => continue,
        };
        if (!local.contains(&src) && !local.contains(&dst)) || node.contains(&src) {
            continue;
        }
        // A side in audit mode lets through what it denies; only enforced denials count.
        let enforced = |ip: IpAddr| plan.endpoint_by_ip(ip).is_none_or(|e| !e.audit);
        let v = verdict::judge(plan, src, dst, protocol, port);
        let denied =
            (!v.egress.allows() && enforced(src)) || (!v.ingress.allows() && enforced(dst));
        if denied && ct.delete(&entry)? {
            tracing::debug!(%src, %dst, protocol = protocol.as_str(), port, "cut");
            cut += 1;
        }
    }
    Ok(cut)
}

/// Logs whether bridged traffic can be filtered on this node (br_netfilter), loudly if not.
pub fn report_br_netfilter() -> BrNetfilter {
    let brnf = BrNetfilter::probe();
    match brnf.problem() {
        Some(p) => tracing::error!("{p}"),
        None if !brnf.bridges.is_empty() => {
            tracing::info!(bridges = ?brnf.bridges, "br_netfilter is on: bridged traffic is filtered")
        }
        None => tracing::info!("no Linux bridge on this node: routed pod traffic"),
    }
    brnf
}

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it spawns later) and starts
/// a thread that sends `wrap(signal)` for each, so that no handler runs in signal context.
pub fn install_signal_thread<E: Send + 'static>(
    tx: Sender<E>,
    wrap: fn(i32) -> E,
) -> anyhow::Result<()> {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask only affects this thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            anyhow::bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(r));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialised; sigwait writes the signal number into `sig`.
                let r = unsafe { libc::sigwait(&set, &mut sig) };
                if r == 0 && tx.send(wrap(sig)).is_err() {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
