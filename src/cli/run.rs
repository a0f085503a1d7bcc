//! `nftpol run`: enforce a folder of manifests on this node and follow its changes.
//!
//! One thread owns the dataplane and reacts to events from a channel: file changes (from a
//! `notify` watcher, debounced so that an editor's or `kubectl cp`'s burst is one update),
//! resync ticks (drift check, repaired by a full replace), retry ticks after a failed apply,
//! and SIGTERM/SIGINT (taken by a `sigwait` thread; the rules stay in place on exit so that a
//! restart does not open a window). Flow logs (`crate::observe::flowlog`) arrive on the same channel and
//! are resolved against the last state read from the folder.
//!
//! Input that does not load keeps the last good state enforced; what happens when the kernel
//! rejects a transaction is the enforcer's business (`crate::engine::enforce`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::Watcher;

use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::ruleset::known_pod_addresses;
use crate::dataplane::{Options, Ruleset};
use crate::engine::enforce::{self, Desired, Enforcer};
use crate::observe::flowlog::{self, FlowLogger};
use crate::observe::metrics::{self, Metrics};
use crate::observe::nflog::LoggedPacket;
use crate::policy::compile::{NodePlan, Scope, compile};
use crate::policy::index::ClusterIndex;
use crate::source::manifest;

use super::Burst;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of manifests to enforce (watched for changes).
    #[arg(long)]
    pub manifests: PathBuf,
    /// The node whose pods are enforced.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Seconds between drift checks (the kernel table against what was applied).
    #[arg(long, default_value_t = 30)]
    pub resync_interval: u64,
    /// Quiet period that ends a burst of file changes, in milliseconds.
    #[arg(long, default_value_t = 75)]
    pub debounce_ms: u64,
    /// Enforcement options shared with the other source.
    #[command(flatten)]
    pub enforce: super::EnforceArgs,
}

enum Event {
    Changed,
    WatchError(String),
    Flow(Vec<LoggedPacket>),
    Shutdown(i32),
}

/// What flow log lines are resolved against: the last state read from the folder.
#[derive(Default)]
struct View {
    plan: Arc<NodePlan>,
    index: ClusterIndex,
}

/// A burst of changes is cut after this long even if files keep changing.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Reads the folder and compiles what it asks for this node.
fn load_desired(
    args: &Args,
    options: Options,
    since: Instant,
    metrics: &Metrics,
) -> anyhow::Result<(Desired, View)> {
    let paths = [args.manifests.clone()];
    // Fingerprint first: if the files change while we read them, we report the older digest
    // and the watcher's next event brings us to the newer one, never the other way round.
    let fingerprint = manifest::fingerprint(&paths)
        .with_context(|| format!("fingerprinting {}", args.manifests.display()))?;
    let loaded = manifest::load(&paths)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    for s in &loaded.invalid {
        tracing::error!("invalid policy skipped (not enforced): {s}");
    }
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Node(args.node.clone()));
    for (reason, n) in plan.skipped_counts() {
        tracing::info!(reason = reason.as_str(), pods = n, "pods not enforced");
    }
    metrics.observe_plan(&plan);
    let stats = plan.stats();
    tracing::info!(
        endpoints = stats.endpoints,
        isolated_ingress = stats.isolated_ingress,
        isolated_egress = stats.isolated_egress,
        policies = stats.policies,
        "compiled"
    );
    let mut ruleset = Ruleset::build(&plan, options);
    ruleset.guard_unknown(
        &args.enforce.ruleset.pod_cidrs,
        known_pod_addresses(&loaded.state.pods),
    );
    let plan = Arc::new(plan);
    Ok((
        Desired {
            fingerprint,
            ruleset,
            since,
            plan: Some(plan.clone()),
        },
        View { plan, index },
    ))
}

/// Reloads the folder and enforces it; input that does not load keeps the last good state.
fn reload(
    args: &Args,
    options: Options,
    enforcer: &mut Enforcer,
    since: Instant,
    metrics: &Metrics,
    view: &mut View,
) {
    match load_desired(args, options, since, metrics) {
        Ok((desired, new_view)) => {
            enforcer.submit(desired);
            *view = new_view;
        }
        Err(e) => {
            tracing::error!("manifests not usable, keeping the last good state enforced: {e:#}")
        }
    }
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Event>();
    // Before any other thread exists, so that they all inherit the blocked signals.
    enforce::install_signal_thread(tx.clone(), Event::Shutdown)?;
    if !args.manifests.is_dir() {
        return Err(super::InputError(format!(
            "--manifests {} is not a folder",
            args.manifests.display()
        ))
        .into());
    }
    let brnf = enforce::report_br_netfilter();
    let metrics = metrics::start(&args.enforce.metrics_addr, &brnf)?;

    let watch_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(e) if e.kind.is_access() => return,
            Ok(_) => Event::Changed,
            Err(e) => Event::WatchError(e.to_string()),
        };
        let _ = watch_tx.send(ev);
    })
    .context("creating the file watcher")?;
    watcher
        .watch(&args.manifests, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", args.manifests.display()))?;

    let options = args.enforce.ruleset.options();
    for warning in args.enforce.ruleset.ignored() {
        tracing::warn!("{warning}");
    }
    flowlog::start(options.nflog_group, tx.clone(), Event::Flow, &metrics)?;
    let mut flows = FlowLogger::new(metrics.clone());
    let mut view = View::default();
    if options.default_deny_unknown && args.enforce.ruleset.pod_cidrs.is_empty() {
        tracing::warn!("--default-deny-unknown without --pod-cidr: no address counts as unknown");
    }
    let mut enforcer = Enforcer::new(args.enforce.status_file.clone())?.strict(options.strict)?;
    enforcer.set_metrics(metrics.clone());
    let resync_every = Duration::from_secs(args.resync_interval.max(1));
    let quiet = Duration::from_millis(args.debounce_ms);
    tracing::info!(node = %args.node, manifests = %args.manifests.display(), "starting");
    let start = Instant::now();
    reload(&args, options, &mut enforcer, start, &metrics, &mut view);
    let mut next_resync = Instant::now() + resync_every;

    loop {
        metrics.heartbeat();
        let wake = enforcer
            .retry_at()
            .map_or(next_resync, |r| r.min(next_resync))
            .min(Instant::now() + metrics::HEARTBEAT_EVERY);
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(event @ (Event::Changed | Event::WatchError(_))) => {
                if let Event::WatchError(e) = event {
                    tracing::warn!("file watcher: {e}; reloading");
                }
                let since = Instant::now();
                let burst = super::until_quiet(&rx, quiet, MAX_DEBOUNCE, |ev| match ev {
                    Event::Changed | Event::WatchError(_) => Burst::Change,
                    Event::Flow(packets) => {
                        flows.log(&packets, &view.plan, &view.index);
                        Burst::Other
                    }
                    Event::Shutdown(sig) => Burst::Shutdown(sig),
                });
                if let Some(sig) = burst {
                    tracing::info!(signal = sig, "shutting down; rules stay in place");
                    return Ok(());
                }
                reload(&args, options, &mut enforcer, since, &metrics, &mut view);
            }
            Ok(Event::Flow(packets)) => {
                flows.log(&packets, &view.plan, &view.index);
            }
            Ok(Event::Shutdown(sig)) => {
                tracing::info!(signal = sig, "shutting down; rules stay in place");
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                enforcer.tick(now);
                if next_resync <= now {
                    metrics.observe_br_netfilter(&BrNetfilter::probe());
                    enforcer.resync();
                    next_resync = now + resync_every;
                }
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
        }
    }
}
