//! `nftpol render`: print the ruleset for a node as nft text (owned by the dataplane work).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The node whose pods are rendered.
    #[arg(long)]
    pub node: String,
}

pub fn execute(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("render is not implemented yet")
}
