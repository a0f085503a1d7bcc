//! `nftpol daemon`: enforce NetworkPolicy from the Kubernetes API on this node.
//!
//! Wiring only: a small tokio runtime runs the API watchers (`crate::source::kube`), whose
//! updates the API state (`crate::engine::state::ApiState`) folds into the reconciler inside
//! the engine's event loop (`crate::engine::event_loop`). Nothing is programmed before every
//! kind has been listed once, so the previous table stays in force across a restart until the
//! new state is complete.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::engine::event_loop::Config;
use crate::engine::state::ApiState;
use crate::source::kube as kube_source;

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

pub fn execute(args: Args) -> anyhow::Result<()> {
    let engine = super::Engine::start(&args.enforce)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("watch")
        .build()
        .context("starting the async runtime")?;
    let kube_client = runtime.block_on(client(args.kubeconfig))?;
    kube_source::start(&runtime, kube_client, args.node.clone(), engine.sink());
    tracing::info!(node = %args.node, "starting; the previous rules stay in force until every kind is listed");
    let state = ApiState::new(
        &args.node,
        engine.options,
        args.enforce.ruleset.pod_cidrs,
        engine.metrics.clone(),
    )
    .after_relist(release_freed_memory);
    let config = Config {
        quiet: Duration::from_millis(args.coalesce_ms),
        max_burst: kube_source::MAX_COALESCE,
        resync_every: Duration::from_secs(args.resync_interval.max(1)),
    };
    // `runtime` lives until the loop ends: dropping it would stop the watchers.
    engine.run(state, config)
}
