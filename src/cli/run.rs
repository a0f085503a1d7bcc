//! `nftpol run`: enforce a folder of manifests on this node and follow its changes.
//!
//! Wiring only: the folder watcher (`crate::source::files`) and the folder's state
//! (`crate::engine::state::FolderState`) feed the engine's event loop
//! (`crate::engine::event_loop`), which debounces changes, reloads, enforces and repairs.
//! Input that does not load keeps the last good state enforced.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::event_loop::Config;
use crate::engine::state::FolderState;
use crate::source::files;

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

pub fn execute(args: Args) -> anyhow::Result<()> {
    if !args.manifests.is_dir() {
        return Err(super::InputError(format!(
            "--manifests {} is not a folder",
            args.manifests.display()
        ))
        .into());
    }
    let engine = super::Engine::start(&args.enforce)?;
    let _watcher = files::watch(&args.manifests, engine.sink())?;
    let pod_cidrs = args.enforce.ruleset.pod_cidrs;
    if engine.options.default_deny_unknown && pod_cidrs.is_empty() {
        tracing::warn!("--default-deny-unknown without --pod-cidr: no address counts as unknown");
    }
    tracing::info!(node = %args.node, manifests = %args.manifests.display(), "starting");
    let state = FolderState::new(
        args.manifests,
        args.node,
        engine.options,
        pod_cidrs,
        engine.metrics.clone(),
    );
    let config = Config {
        quiet: Duration::from_millis(args.debounce_ms),
        max_burst: files::MAX_DEBOUNCE,
        resync_every: Duration::from_secs(args.resync_interval.max(1)),
    };
    engine.run(state, config)
}
