//! `nftpol render`: print the ruleset for a node as nft text, exactly as
//! `nft list table inet nftpol` shows it once `nftpol run` has programmed it.

use std::path::PathBuf;

use crate::compile::{Scope, compile};
use crate::dataplane::render::{render, render_script};
use crate::dataplane::ruleset::known_pod_addresses;
use crate::dataplane::{Options, Ruleset};
use crate::index::ClusterIndex;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The node whose pods are rendered.
    #[arg(long)]
    pub node: String,
    /// Render the output chain that checks node-to-pod traffic (as `run --police-node-traffic`).
    #[arg(long)]
    pub police_node_traffic: bool,
    /// Print a script for `nft -f` that atomically replaces the table, instead of the listing.
    #[arg(long)]
    pub script: bool,
    /// Render the unknown-address drops (as `run --default-deny-unknown`).
    #[arg(long)]
    pub default_deny_unknown: bool,
    /// The node's pod CIDR for `--default-deny-unknown` (repeatable).
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Node(args.node.clone()));
    for (pod, reason) in &plan.skipped {
        eprintln!("note: {pod} is not enforced ({})", reason.as_str());
    }
    let options = Options {
        police_node_traffic: args.police_node_traffic,
        default_deny_unknown: args.default_deny_unknown,
        ..Options::default()
    };
    let mut ruleset = Ruleset::build(&plan, options);
    ruleset.guard_unknown(&args.pod_cidrs, known_pod_addresses(&loaded.state.pods));
    if args.script {
        print!("{}", render_script(&ruleset));
    } else {
        print!("{}", render(&ruleset));
    }
    Ok(())
}
