//! `nftpol cleanup`: the uninstall path. Removes everything nftpol created on this node (table
//! `inet nftpol`; nothing else in the ruleset is touched), so that traffic is open again.

use anyhow::Context;

use crate::dataplane::Dataplane;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn execute(_args: Args) -> anyhow::Result<()> {
    let mut dp = Dataplane::new().context("opening the netfilter netlink socket")?;
    let existed = dp.table_exists().context("looking for table inet nftpol")?;
    dp.delete_table().context("deleting table inet nftpol")?;
    if existed {
        println!("deleted table inet nftpol: NetworkPolicy is no longer enforced on this node");
    } else {
        println!("table inet nftpol does not exist: nothing to clean up");
    }
    Ok(())
}
