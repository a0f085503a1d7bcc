//! `--strict`: after a ruleset change, the conntrack entries of open connections the new plan
//! no longer allows are deleted, so that their next packet is judged as new (and dropped)
//! instead of riding on `ct state established accept`.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::dataplane::conntrack::{self, Conntrack, ConntrackError, Entry};
use crate::policy::compile::NodePlan;
use crate::policy::model::Protocol;
use crate::policy::verdict;

/// The conntrack table as the sweep sees it: ctnetlink in production, a list in unit tests.
pub trait ConnTable {
    fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError>;

    /// Deletes one entry; `false` when it was already gone.
    fn delete(&mut self, entry: &Entry) -> Result<bool, ConntrackError>;
}

impl ConnTable for Conntrack {
    fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        Conntrack::dump(self)
    }

    fn delete(&mut self, entry: &Entry) -> Result<bool, ConntrackError> {
        Conntrack::delete(self, entry)
    }
}

/// Deletes the conntrack entries of TCP, UDP and SCTP connections to or from a local endpoint
/// that `plan` does not allow as new connections; returns how many were deleted. Connections
/// the node opened to its pods are left alone unless `police_node` (nothing polices them, so a
/// cut one would only come back with its next packet).
pub fn cut_denied(
    ct: &mut impl ConnTable,
    plan: &NodePlan,
    police_node: bool,
) -> Result<u64, ConntrackError> {
    let node: HashSet<IpAddr> = if police_node {
        HashSet::new()
    } else {
        conntrack::local_addresses()?
    };
    sweep(ct, plan, &node)
}

/// [`cut_denied`] with the node's own addresses given: connections from them are left alone.
pub fn sweep(
    ct: &mut impl ConnTable,
    plan: &NodePlan,
    node: &HashSet<IpAddr>,
) -> Result<u64, ConntrackError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dataplane::conntrack::Tuple;
    use crate::policy::compile::{Endpoint, Isolation, RuleAllow};
    use crate::policy::intervals::{AddrSet, Allowed, AllowedBuilder};
    use crate::policy::model::ObjectKey;

    /// A conntrack table in a vector; deleted entries are recorded.
    #[derive(Default)]
    struct Table {
        entries: Vec<Entry>,
        deleted: Vec<Entry>,
    }

    impl ConnTable for Table {
        fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
            Ok(self.entries.clone())
        }

        fn delete(&mut self, entry: &Entry) -> Result<bool, ConntrackError> {
            let before = self.entries.len();
            self.entries.retain(|e| e != entry);
            self.deleted.push(*entry);
            Ok(self.entries.len() < before)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn conn(src: &str, dst: &str, proto: u8, dport: u16) -> Entry {
        Entry {
            orig: Tuple {
                src: ip(src),
                dst: ip(dst),
                proto,
                sport: 40000,
                dport,
            },
            reply: None,
            zone: None,
        }
    }

    /// `server` (10.0.0.2) accepts TCP 80 from `client` (10.0.0.1) only; `client` is not
    /// isolated. `auditor` (10.0.0.3) denies all ingress, in audit mode.
    fn plan() -> NodePlan {
        // One rule allowing exactly the merged set, as the compiler would produce.
        let iso = |allowed: Allowed| Isolation {
            policies: vec![ObjectKey::new("default", "p")],
            rules: vec![RuleAllow {
                policy: ObjectKey::new("default", "p"),
                rule: 0,
                allowed: allowed.clone(),
            }],
            allowed,
            log_allowed: false,
        };
        let mut web = AllowedBuilder::default();
        web.add_ports(Protocol::Tcp, 80, 80, AddrSet::from_addrs([ip("10.0.0.1")]));
        let endpoint = |name: &str, addr: &str, ingress: Option<Allowed>, audit: bool| Endpoint {
            pod: ObjectKey::new("default", name),
            ips: vec![ip(addr)],
            ingress: ingress.map(iso),
            egress: None,
            audit,
            cluster_ingress: Default::default(),
            cluster_egress: Default::default(),
        };
        let endpoints = [
            endpoint("client", "10.0.0.1", None, false),
            endpoint("server", "10.0.0.2", Some(web.finish()), false),
            endpoint("auditor", "10.0.0.3", Some(Allowed::default()), true),
        ];
        NodePlan {
            endpoints: endpoints.into_iter().map(|e| (e.pod.clone(), e)).collect(),
            skipped: BTreeMap::new(),
        }
    }

    #[test]
    fn cuts_denied_connections_and_keeps_allowed_ones() {
        let allowed = conn("10.0.0.1", "10.0.0.2", 6, 80);
        let wrong_port = conn("10.0.0.1", "10.0.0.2", 6, 81);
        let wrong_peer = conn("10.9.0.1", "10.0.0.2", 17, 80);
        let mut table = Table {
            entries: vec![allowed, wrong_port, wrong_peer],
            ..Table::default()
        };
        let cut = sweep(&mut table, &plan(), &HashSet::new()).unwrap();
        assert_eq!(cut, 2);
        assert_eq!(table.entries, [allowed]);
    }

    #[test]
    fn leaves_alone_what_no_enforced_policy_judges() {
        let node = HashSet::from([ip("192.168.1.1")]);
        let entries = vec![
            // Neither end is a local endpoint.
            conn("10.9.0.1", "10.9.0.2", 6, 81),
            // ICMP: not judged by port.
            conn("10.9.0.1", "10.0.0.2", 1, 0),
            // From the node itself: not policed without `police_node`.
            conn("192.168.1.1", "10.0.0.2", 6, 81),
            // To a pod in audit mode: its denials are only counted.
            conn("10.0.0.1", "10.0.0.3", 6, 80),
        ];
        let mut table = Table {
            entries: entries.clone(),
            ..Table::default()
        };
        assert_eq!(sweep(&mut table, &plan(), &node).unwrap(), 0);
        assert_eq!(table.entries, entries);
        // Policing the node's traffic (no node addresses): its connection is cut.
        assert_eq!(sweep(&mut table, &plan(), &HashSet::new()).unwrap(), 1);
        assert_eq!(table.deleted, [entries[2]]);
    }

    #[test]
    fn judges_the_destination_after_dnat() {
        // To a service address, DNATed to the server's port 81: the reply tuple says so.
        let mut via_service = conn("10.0.0.1", "10.96.0.10", 6, 80);
        via_service.reply = Some(Tuple {
            src: ip("10.0.0.2"),
            dst: ip("10.0.0.1"),
            proto: 6,
            sport: 81,
            dport: 40000,
        });
        let mut table = Table {
            entries: vec![via_service],
            ..Table::default()
        };
        assert_eq!(sweep(&mut table, &plan(), &HashSet::new()).unwrap(), 1);
    }

    #[test]
    fn no_local_endpoint_no_dump() {
        struct Unreachable;
        impl ConnTable for Unreachable {
            fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
                Err(ConntrackError::Malformed("dumped"))
            }
            fn delete(&mut self, _: &Entry) -> Result<bool, ConntrackError> {
                Err(ConntrackError::Malformed("deleted"))
            }
        }
        let empty = NodePlan::default();
        assert_eq!(sweep(&mut Unreachable, &empty, &HashSet::new()).unwrap(), 0);
    }
}
