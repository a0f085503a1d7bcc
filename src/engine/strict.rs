//! `--strict`: after a ruleset change, the conntrack entries of open connections the new plan
//! no longer allows are deleted, so that their next packet is judged as new (and dropped)
//! instead of riding on `ct state established accept`.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::dataplane::conntrack::{self, Conntrack, ConntrackError};
use crate::policy::compile::NodePlan;
use crate::policy::model::Protocol;
use crate::policy::verdict;

/// Deletes the conntrack entries of TCP, UDP and SCTP connections to or from a local endpoint
/// that `plan` does not allow as new connections; returns how many were deleted. Connections
/// the node opened to its pods are left alone unless `police_node` (nothing polices them, so a
/// cut one would only come back with its next packet).
pub fn cut_denied(
    ct: &mut Conntrack,
    plan: &NodePlan,
    police_node: bool,
) -> Result<u64, ConntrackError> {
    let node: HashSet<IpAddr> = if police_node {
        HashSet::new()
    } else {
        conntrack::local_addresses()?
    };
    let local: HashSet<IpAddr> = plan
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    if local.is_empty() {
        return Ok(0);
    }
    let mut cut = 0;
    for entry in ct.dump()? {
        let (src, dst, proto, port) = entry.judged();
        let protocol = match proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            _ => continue,
        };
        if (!local.contains(&src) && !local.contains(&dst)) || node.contains(&src) {
            continue;
        }
        // A side in audit mode lets through what it denies; only enforced denials count.
        let enforced = |ip: IpAddr| plan.endpoint_by_ip(ip).is_none_or(|e| !e.audit);
        let v = verdict::judge(plan, src, dst, protocol, port);
        let denied =
            (!v.egress.allows() && enforced(src)) || (!v.ingress.allows() && enforced(dst));
        if denied && ct.delete(&entry)? {
            tracing::debug!(%src, %dst, protocol = protocol.as_str(), port, "cut");
            cut += 1;
        }
    }
    Ok(cut)
}
