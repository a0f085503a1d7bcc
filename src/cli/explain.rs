//! `nftpol explain`: the verdict for one connection and the policies and rules behind it.

use std::net::IpAddr;
use std::path::PathBuf;

use super::InputError;
use crate::policy::compile::{Scope, compile};
use crate::policy::index::ClusterIndex;
use crate::policy::model::{ObjectKey, Protocol};
use crate::policy::verdict::{explain_text, judge, judge_pods};
use crate::source::manifest::Loaded;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The client pod, as NAMESPACE/POD.
    #[arg(long)]
    pub from: String,
    /// The server: NAMESPACE/POD or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: Protocol,
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
    print!(
        "{}",
        answer(
            &loaded,
            &args.from,
            &args.to,
            args.port,
            args.protocol,
            "the manifests"
        )?
    );
    Ok(())
}

/// The explanation of one connection in `loaded` (read from files, or from the live cluster
/// by `nftpol kubectl explain`); `origin` names where a missing pod was looked for.
pub fn answer(
    loaded: &Loaded,
    from_arg: &str,
    to_arg: &str,
    port: u16,
    protocol: Protocol,
    origin: &str,
) -> anyhow::Result<String> {
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Cluster);
    for (a, b) in crate::policy::compile::cluster_policy_ties(&index, &plan) {
        eprintln!(
            "warning: {a} and {b} have the same tier and priority and select a common pod: the API leaves their order undefined; nftpol evaluates them by name"
        );
    }
    let endpoint = |s: &str| -> anyhow::Result<_> {
        let key =
            ObjectKey::parse(s).ok_or_else(|| InputError(format!("{s:?} is not NAMESPACE/POD")))?;
        if let Some(reason) = plan.skipped.get(&key) {
            return Err(InputError(format!(
                "pod {key} takes no part in enforcement ({})",
                reason.as_str()
            ))
            .into());
        }
        plan.endpoint(&key)
            .ok_or_else(|| InputError(format!("no pod {key} in {origin}")).into())
    };
    let from = endpoint(from_arg)?;
    let verdict = match to_arg.parse::<IpAddr>() {
        Ok(ip) => {
            let src = from
                .ips
                .iter()
                .copied()
                .find(|s| s.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| {
                    InputError(format!("{} has no address of the family of {ip}", from.pod))
                })?;
            judge(&plan, src, ip, protocol, port)
        }
        Err(_) => {
            let to = endpoint(to_arg)?;
            judge_pods(from, to, protocol, port).ok_or_else(|| {
                InputError(format!(
                    "{} and {} share no address family",
                    from.pod, to.pod
                ))
            })?
        }
    };
    let mut out = explain_text(&index, &plan, from_arg, to_arg, &verdict);
    for s in &loaded.invalid {
        out.push_str(&format!(
            "note: invalid policy skipped (not enforced): {s}\n"
        ));
    }
    Ok(out)
}
