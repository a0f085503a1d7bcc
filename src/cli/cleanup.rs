//! `nftpol cleanup`: the uninstall path. Removes everything nftpol created on this node (table
//! `inet nftpol`; nothing else in the ruleset is touched), so that traffic is open again.
//! With `--wait` it then stays up until SIGTERM, so that a DaemonSet can run it on every node
//! (`manifests/cleanup/`) without a shell in the image.

use std::sync::mpsc;

use anyhow::Context;

use crate::dataplane::Dataplane;
use crate::engine::enforce;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// After cleaning up, wait for SIGTERM or SIGINT instead of exiting.
    #[arg(long)]
    pub wait: bool,
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<i32>();
    if args.wait {
        enforce::install_signal_thread(tx, |sig| sig)?;
    }
    let mut dp = Dataplane::new().context("opening the netfilter netlink socket")?;
    let existed = dp.table_exists().context("looking for table inet nftpol")?;
    dp.delete_table().context("deleting table inet nftpol")?;
    if existed {
        println!("deleted table inet nftpol: NetworkPolicy is no longer enforced on this node");
    } else {
        println!("table inet nftpol does not exist: nothing to clean up");
    }
    if args.wait {
        let sig = rx.recv().context("waiting for a signal")?;
        println!("signal {sig}: done");
    }
    Ok(())
}
