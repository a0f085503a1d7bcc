//! `nftpol render`: print the ruleset for a node as nft text, exactly as
//! `nft list table inet nftpol` shows it once `nftpol run` has programmed it.

use std::path::PathBuf;

use crate::dataplane::Ruleset;
use crate::dataplane::render::{render, render_script};
use crate::dataplane::ruleset::known_pod_addresses;
use crate::policy::compile::{Scope, compile};
use crate::policy::index::ClusterIndex;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The node whose pods are rendered.
    #[arg(long)]
    pub node: String,
    /// Print a script for `nft -f` that atomically replaces the table, instead of the listing.
    #[arg(long)]
    pub script: bool,
    /// The same flags as `run` and `daemon`, for the same ruleset.
    #[command(flatten)]
    pub ruleset: super::RulesetArgs,
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Node(args.node.clone()));
    for (pod, reason) in &plan.skipped {
        eprintln!("note: {pod} is not enforced ({})", reason.as_str());
    }
    let mut ruleset = Ruleset::build(&plan, args.ruleset.options());
    ruleset.guard_unknown(
        &args.ruleset.pod_cidrs,
        known_pod_addresses(&loaded.state.pods),
    );
    if args.script {
        print!("{}", render_script(&ruleset));
    } else {
        print!("{}", render(&ruleset));
    }
    Ok(())
}
