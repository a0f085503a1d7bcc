//! `nftpol run`: enforce a folder of manifests on this node and follow its changes
//! (owned by the dataplane work).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of manifests to enforce (watched for changes).
    #[arg(long)]
    pub manifests: PathBuf,
    /// The node whose pods are enforced.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
}

pub fn execute(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("run is not implemented yet")
}
