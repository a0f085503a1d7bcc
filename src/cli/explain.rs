//! `nftpol explain`: the verdict for one connection and the policies and rules behind it.

use std::net::IpAddr;
use std::path::PathBuf;

use super::InputError;
use std::collections::BTreeMap;

use crate::dataplane::ruleset::cluster_rule_base;
use crate::policy::compile::{NodePlan, Scope, compile};
use crate::policy::index::ClusterIndex;
use crate::policy::intervals::{AddrSet, Allowed, AllowedBuilder};
use crate::policy::model::Direction;
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
    /// The metrics address (HOST:PORT) of the nftpol daemon or `run` of the client's node: its
    /// `/dns` says which names `domainNames` rules learned which addresses for, and the
    /// verdict counts them.
    #[arg(long, value_name = "HOST:PORT")]
    pub dns_from: Option<String>,
}

type LearnedNames = BTreeMap<IpAddr, Vec<crate::engine::dns::Mapping>>;

/// `GET /dns` of a daemon's metrics server.
fn fetch_learned(addr: &str) -> anyhow::Result<LearnedNames> {
    use anyhow::Context as _;
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET /dns HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading {addr}/dns"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow::anyhow!("{addr}/dns: not an HTTP response"))?;
    serde_json::from_str(body).with_context(|| format!("{addr}/dns: not the learned names"))
}

/// Lets each `domainNames` rule of the plan match the addresses the daemon learned for it.
fn apply_learned(plan: &mut NodePlan, learned: &LearnedNames) {
    for e in plan.endpoints.values_mut() {
        for r in e
            .cluster_egress
            .admin
            .iter_mut()
            .chain(e.cluster_egress.baseline.iter_mut())
        {
            if r.matches.domains.is_empty() {
                continue;
            }
            let tag = format!(
                "{}:{} ",
                r.tier.as_str(),
                cluster_rule_base(&r.policy, Direction::Egress, r.rule)
            );
            let ips = learned
                .iter()
                .filter(|(_, ms)| ms.iter().any(|m| m.rule.starts_with(&tag)))
                .map(|(ip, _)| *ip);
            let addrs = AddrSet::from_addrs(ips);
            if addrs.is_empty() {
                continue;
            }
            let mut m = (*r.matches).clone();
            let mut b = AllowedBuilder::default();
            if m.all_ports {
                b.add_any_port(addrs);
            } else {
                for (p, lo, hi) in &m.port_ranges {
                    b.add_ports(*p, *lo, *hi, addrs.clone());
                }
            }
            m.shared = Allowed::union_all([&m.shared, &b.finish()]);
            r.matches = std::sync::Arc::new(m);
        }
    }
}

pub fn execute(args: Args) -> anyhow::Result<()> {
    let loaded = super::load_input(&args.files)?;
    let learned = match &args.dns_from {
        Some(addr) => Some(fetch_learned(addr)?),
        None => None,
    };
    print!(
        "{}",
        answer_with(
            &loaded,
            &args.from,
            &args.to,
            args.port,
            args.protocol,
            "the manifests",
            learned.as_ref(),
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
    answer_with(loaded, from_arg, to_arg, port, protocol, origin, None)
}

/// [`answer`], with the names a daemon's `domainNames` rules learned (`--dns-from`).
pub fn answer_with(
    loaded: &Loaded,
    from_arg: &str,
    to_arg: &str,
    port: u16,
    protocol: Protocol,
    origin: &str,
    learned: Option<&LearnedNames>,
) -> anyhow::Result<String> {
    let index = ClusterIndex::from_state(&loaded.state);
    let mut plan = compile(&index, &Scope::Cluster);
    if let Some(l) = learned {
        apply_learned(&mut plan, l);
    }
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
    if let (Some(l), Ok(ip)) = (learned, to_arg.parse::<IpAddr>()) {
        match l.get(&ip).filter(|m| !m.is_empty()) {
            Some(ms) => {
                for m in ms {
                    out.push_str(&format!(
                        "{ip} is learned for {} (rule {}, {} s left)\n",
                        m.name, m.rule, m.expires_in_s
                    ));
                }
            }
            None => out.push_str(&format!(
                "{ip}: no name learned for it by domainNames rules\n"
            )),
        }
    }
    for s in &loaded.invalid {
        out.push_str(&format!(
            "note: invalid policy skipped (not enforced): {s}\n"
        ));
    }
    Ok(out)
}
