//! `nftpol daemon`: enforce NetworkPolicy from the Kubernetes API on this node.
//!
//! Threads: a small tokio runtime runs the watchers (`source::kube`); this thread owns the
//! reconciler and the enforcer and takes updates, signals and timers from one channel. A burst
//! of updates (a relist, a rollout) is drained and applied to the index first, then programmed
//! as one transaction. Nothing is programmed before every kind has been listed once, so the
//! previous table stays in force across a restart until the new state is complete.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::dataplane::{Options, Ruleset};
use crate::enforce::{self, Desired, Enforcer};
use crate::reconcile::Reconciler;
use crate::source::Update;
use crate::source::kube::{self as kube_source, Sink};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node: String,
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Also check node-to-pod traffic (kubelet probes included) against ingress policies.
    #[arg(long)]
    pub police_node_traffic: bool,
    /// Written atomically after every successful apply (as for `nftpol run`).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Seconds between full resyncs (recompile everything, check the kernel for drift).
    #[arg(long, default_value_t = 300)]
    pub resync_interval: u64,
    /// Quiet period that ends a burst of updates, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub coalesce_ms: u64,
    /// Cut open connections a change no longer allows (deletes their conntrack entries).
    /// Off: they keep flowing until they close, as conntrack accepts established traffic.
    #[arg(long)]
    pub strict: bool,
}

enum Event {
    Update(Update),
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

/// Applies every update that arrives until a quiet period; a shutdown wins.
fn coalesce(rx: &Receiver<Event>, r: &mut Reconciler, quiet: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < MAX_COALESCE {
        match rx.recv_timeout(quiet) {
            Ok(Event::Update(u)) => r.apply(u),
            Ok(Event::Shutdown(sig)) => return Some(sig),
            Err(_) => break,
        }
    }
    None
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
    enforce::report_br_netfilter();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("watch")
        .build()
        .context("starting the async runtime")?;
    let kube_client = runtime.block_on(client(args.kubeconfig.clone()))?;
    let sink = Sink::new(tx.clone(), Event::Update);
    runtime.spawn(kube_source::run(kube_client, args.node.clone(), sink));

    let options = Options {
        police_node_traffic: args.police_node_traffic,
    };
    let mut reconciler = Reconciler::new(&args.node);
    let mut enforcer = Enforcer::new(args.status_file.clone())?.strict(args.strict)?;
    let resync_every = Duration::from_secs(args.resync_interval.max(1));
    let quiet = Duration::from_millis(args.coalesce_ms);
    let mut next_resync = Instant::now() + resync_every;
    let mut waiting_since: Option<Instant> = None;
    tracing::info!(node = %args.node, "starting; the previous rules stay in force until every kind is listed");

    loop {
        let wake = enforcer
            .retry_at()
            .map_or(next_resync, |r| r.min(next_resync));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Update(update)) => {
                waiting_since.get_or_insert_with(Instant::now);
                reconciler.apply(update);
                if let Some(sig) = coalesce(&rx, &mut reconciler, quiet) {
                    tracing::info!(signal = sig, "shutting down; rules stay in place");
                    return Ok(());
                }
                if reconciler.ready() {
                    let since = waiting_since.take().unwrap_or_else(Instant::now);
                    if reconciler.take_dirty() || enforcer.generation() == 0 {
                        enforcer.submit(Desired {
                            ruleset: Ruleset::build(reconciler.plan(), options),
                            fingerprint: summary(&reconciler),
                            since,
                            plan: args.strict.then(|| Arc::new(reconciler.plan().clone())),
                        });
                    }
                }
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
                        enforcer.submit(Desired {
                            ruleset: Ruleset::build(reconciler.plan(), options),
                            fingerprint: summary(&reconciler),
                            since: now,
                            plan: args.strict.then(|| Arc::new(reconciler.plan().clone())),
                        });
                    }
                    enforcer.resync();
                    next_resync = now + resync_every;
                }
            }
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("event channel closed"),
        }
    }
}
