//! `nftpol render`: print the ruleset for a node as nft text, exactly as
//! `nft list table inet nftpol` shows it once `nftpol run` has programmed it.

use std::path::PathBuf;

use crate::compile::{Scope, compile};
use crate::dataplane::render::{render, render_script};
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
    };
    let ruleset = Ruleset::build(&plan, options);
    if args.script {
        print!("{}", render_script(&ruleset));
    } else {
        print!("{}", render(&ruleset));
    }
    Ok(())
}
