//! `nftpol daemon`: enforce NetworkPolicy from the Kubernetes API on this node.
//!
//! Threads: a small tokio runtime runs the watchers (`source::kube`); this thread owns the
//! reconciler and the enforcer and takes updates, signals and timers from one channel. A burst
//! of updates (a relist, a rollout) is drained and applied to the index first, then programmed
//! as one transaction. Nothing is programmed before every kind has been listed once, so the
//! previous table stays in force across a restart until the new state is complete. Flow logs
//! (`crate::observe::flowlog`) arrive on the same channel and are resolved against the index and plan
//! as they are.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::IpNet;

use crate::dataplane::br_netfilter::BrNetfilter;
use crate::dataplane::ruleset::known_pod_addresses;
use crate::dataplane::{Options, Ruleset};
use crate::engine::enforce::{self, Desired, Enforcer};
use crate::engine::reconcile::Reconciler;
use crate::observe::flowlog::{self, FlowLogger};
use crate::observe::metrics::{self, Metrics};
use crate::observe::nflog::LoggedPacket;
use crate::source::kube::{self as kube_source, Sink};
use crate::source::{Change, Update};

use super::Burst;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node: String,
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds between full resyncs (recompile everything, check the kernel for drift).
    #[arg(long, default_value_t = 300)]
    pub resync_interval: u64,
    /// Quiet period that ends a burst of updates, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub coalesce_ms: u64,
    /// Enforcement options shared with the other source.
    #[command(flatten)]
    pub enforce: super::EnforceArgs,
}

enum Event {
    Update(Update),
    Flow(Vec<LoggedPacket>),
    Shutdown(i32),
}

/// A burst is cut after this long even if updates keep coming.
const MAX_COALESCE: Duration = Duration::from_millis(250);

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and no in-cluster service account")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// Applies one update to the reconciler; notes whether it was a relist.
fn apply(r: &mut Reconciler, u: Update, metrics: &Metrics, relisted: &mut bool) {
    metrics.observe_update(&u);
    *relisted |= matches!(
        &u,
        Update::Namespace(Change::Relisted(_))
            | Update::Pod(Change::Relisted(_))
            | Update::Policy(Change::Relisted(_))
    );
    r.apply(u);
}

/// A relist deserialises every object of a kind (10,000 pods are tens of MiB of JSON and
/// k8s-openapi structs) and keeps only the compact model; glibc keeps the freed heap mapped
/// unless asked to give it back.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live data.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What `--default-deny-unknown` depends on besides the plan: the pod CIDRs and the known
/// addresses inside them (a pod anywhere in the cluster can change them). `None` when off.
type Guard = Option<(Vec<IpNet>, BTreeSet<IpAddr>)>;

fn guard(r: &Reconciler, args: &Args) -> Guard {
    if !args.enforce.ruleset.options().default_deny_unknown {
        return None;
    }
    let cidrs = if args.enforce.ruleset.pod_cidrs.is_empty() {
        r.pod_cidrs().to_vec()
    } else {
        args.enforce.ruleset.pod_cidrs.clone()
    };
    let mut known = known_pod_addresses(r.index().pods());
    known.retain(|ip| cidrs.iter().any(|c| c.contains(ip)));
    Some((cidrs, known))
}

fn ruleset(r: &Reconciler, options: Options, guard: &Guard) -> Ruleset {
    let mut rs = Ruleset::build(r.plan(), options);
    if let Some((cidrs, known)) = guard {
        rs.guard_unknown(cidrs, known.iter().copied());
    }
    rs
}

fn summary(r: &Reconciler) -> String {
    let s = r.plan().stats();
    format!(
        "api:{}pods/{}policies:{}endpoints/{}isolated",
        r.index().pod_count(),
        r.index().policy_count(),
        s.endpoints,
        r.plan().isolated().count()
    )
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Event>();
    // Before any other thread exists, so that they all inherit the blocked signals.
    enforce::install_signal_thread(tx.clone(), Event::Shutdown)?;
    let brnf = enforce::report_br_netfilter();
    let metrics = metrics::start(&args.enforce.metrics_addr, &brnf)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("watch")
        .build()
        .context("starting the async runtime")?;
    let kube_client = runtime.block_on(client(args.kubeconfig.clone()))?;
    let sink = Sink::new(tx.clone(), Event::Update);
    let watches = runtime.spawn(kube_source::run(kube_client, args.node.clone(), sink));
    let mut watches_stopped = false;

    let options = args.enforce.ruleset.options();
    for warning in args.enforce.ruleset.ignored() {
        tracing::warn!("{warning}");
    }
    flowlog::start(options.nflog_group, tx.clone(), Event::Flow, &metrics)?;
    let mut flows = FlowLogger::new(metrics.clone());
    let mut last_guard: Guard = None;
    let mut reconciler = Reconciler::new(&args.node);
    let mut enforcer = Enforcer::new(args.enforce.status_file.clone())?.strict(options.strict)?;
    enforcer.set_metrics(metrics.clone());
    let resync_every = Duration::from_secs(args.resync_interval.max(1));
    let quiet = Duration::from_millis(args.coalesce_ms);
    let mut next_resync = Instant::now() + resync_every;
    let mut waiting_since: Option<Instant> = None;
    tracing::info!(node = %args.node, "starting; the previous rules stay in force until every kind is listed");

    loop {
        metrics.heartbeat();
        if !watches_stopped && watches.is_finished() {
            // The watchers retry forever; ending means a panic or a closed channel.
            tracing::error!("the API watches stopped");
            metrics.observe_watches_stopped();
            watches_stopped = true;
        }
        let wake = enforcer
            .retry_at()
            .map_or(next_resync, |r| r.min(next_resync))
            .min(Instant::now() + metrics::HEARTBEAT_EVERY);
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Update(update)) => {
                waiting_since.get_or_insert_with(Instant::now);
                let mut relisted = false;
                apply(&mut reconciler, update, &metrics, &mut relisted);
                let burst = super::until_quiet(&rx, quiet, MAX_COALESCE, |ev| match ev {
                    Event::Update(u) => {
                        apply(&mut reconciler, u, &metrics, &mut relisted);
                        Burst::Change
                    }
                    Event::Flow(packets) => {
                        flows.log(&packets, reconciler.plan(), reconciler.index());
                        Burst::Other
                    }
                    Event::Shutdown(sig) => Burst::Shutdown(sig),
                });
                if let Some(sig) = burst {
                    tracing::info!(signal = sig, "shutting down; rules stay in place");
                    return Ok(());
                }
                if reconciler.ready() {
                    let since = waiting_since.take().unwrap_or_else(Instant::now);
                    let g = guard(&reconciler, &args);
                    let dirty = reconciler.take_dirty() || g != last_guard;
                    if dirty || enforcer.generation() == 0 {
                        let ruleset = ruleset(&reconciler, options, &g);
                        last_guard = g;
                        metrics.observe_plan(reconciler.plan());
                        enforcer.submit(Desired {
                            ruleset,
                            fingerprint: summary(&reconciler),
                            since,
                            plan: options.strict.then(|| Arc::new(reconciler.plan().clone())),
                        });
                    }
                }
                if relisted {
                    release_freed_memory();
                }
            }
            Ok(Event::Flow(packets)) => {
                flows.log(&packets, reconciler.plan(), reconciler.index());
            }
            Ok(Event::Shutdown(sig)) => {
                tracing::info!(signal = sig, "shutting down; rules stay in place");
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                enforcer.tick(now);
                if next_resync <= now && reconciler.ready() {
                    let fixed = reconciler.full_resync();
                    if fixed > 0 {
                        tracing::warn!(endpoints = fixed, "full resync fixed endpoints");
                        metrics.observe_plan(reconciler.plan());
                        enforcer.submit(Desired {
                            ruleset: ruleset(&reconciler, options, &last_guard),
                            fingerprint: summary(&reconciler),
                            since: now,
                            plan: options.strict.then(|| Arc::new(reconciler.plan().clone())),
                        });
                    }
                    metrics.observe_br_netfilter(&BrNetfilter::probe());
                    enforcer.resync();
                    next_resync = now + resync_every;
                }
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
        }
    }
}
