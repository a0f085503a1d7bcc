//! `--strict`: after a ruleset change, the conntrack entries of open connections the new plan
//! no longer allows are deleted, so that their next packet is judged as new (and dropped)
//! instead of riding on `ct state established accept`.
//!
//! A sweep runs on the main loop, so it is bounded: the dump is judged as it arrives (nothing
//! but the denied entries is kept, at most [`MAX_DOOMED`]), deletions go [`conntrack::BATCH`]
//! to a `sendmsg`, and after [`SWEEP_BUDGET`] of deleting the sweep stops between batches and
//! hands back what is left ([`Cut`]); the enforcer goes on with it at its next turn, after
//! pending inputs, without dumping the table again (unless more entries were denied than
//! remembered).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::dataplane::conntrack::{self, Conntrack, ConntrackError, Entry};
use crate::policy::compile::NodePlan;
use crate::policy::model::Protocol;
use crate::policy::verdict;

/// How long one turn of deleting may take before it stops between two delete batches.
pub const SWEEP_BUDGET: Duration = Duration::from_millis(200);

/// Denied entries one sweep remembers; beyond that the sweep is incomplete.
pub const MAX_DOOMED: usize = 100_000;

/// The conntrack table as the sweep sees it: ctnetlink in production, a list in unit tests.
pub trait ConnTable {
    /// Calls `each` with every entry.
    fn dump(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError>;

    /// Deletes the entries; returns how many were deleted (the others were already gone).
    fn delete(&mut self, entries: &[Entry]) -> Result<u64, ConntrackError>;
}

impl ConnTable for Conntrack {
    fn dump(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
        Conntrack::dump_each(self, each)
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<u64, ConntrackError> {
        Conntrack::delete_many(self, entries)
    }
}

/// What one sweep (or one turn of an unfinished one) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries dumped (0 when going on with a [`Cut`]).
    pub examined: u64,
    /// Entries deleted.
    pub cut: u64,
    /// False when the budget ran out (or too many entries were denied) before every denied
    /// entry was deleted: the returned [`Cut`] is to be gone on with.
    pub complete: bool,
    pub took: Duration,
}

/// The denied entries of a sweep not deleted yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    doomed: Vec<Entry>,
    next: usize,
    /// More entries were denied than [`MAX_DOOMED`]: once these are gone, dump again.
    pub overflow: bool,
}

impl Cut {
    /// Entries left to delete.
    pub fn left(&self) -> usize {
        self.doomed.len() - self.next
    }

    /// Deletes entries until none is left or `budget` has passed (checked between batches).
    pub fn go_on(
        &mut self,
        ct: &mut impl ConnTable,
        budget: Duration,
    ) -> Result<Sweep, ConntrackError> {
        let t0 = Instant::now();
        let mut out = Sweep::default();
        while self.left() > 0 {
            let end = (self.next + conntrack::BATCH).min(self.doomed.len());
            out.cut += ct.delete(&self.doomed[self.next..end])?;
            self.next = end;
            if t0.elapsed() >= budget {
                break;
            }
        }
        out.complete = self.left() == 0 && !self.overflow;
        out.took = t0.elapsed();
        Ok(out)
    }
}

/// Deletes the conntrack entries of TCP, UDP and SCTP connections to or from a local endpoint
/// that `plan` does not allow as new connections; returns how many were deleted. Connections
/// the node opened to its pods are left alone unless `police_node` (nothing polices them, so a
/// cut one would only come back with its next packet). Stops after `budget` (see the module
/// documentation).
pub fn cut_denied(
    ct: &mut impl ConnTable,
    plan: &NodePlan,
    police_node: bool,
    budget: Duration,
) -> Result<(Sweep, Cut), ConntrackError> {
    let node: HashSet<IpAddr> = if police_node {
        HashSet::new()
    } else {
        conntrack::local_addresses()?
    };
    sweep(ct, plan, &node, budget)
}

/// Whether the plan denies the connection of `entry` as a new one (judged after DNAT).
fn denies(plan: &NodePlan, local: &HashSet<IpAddr>, node: &HashSet<IpAddr>, entry: &Entry) -> bool {
    let (src, dst, proto, port) = entry.judged();
    let protocol = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return false,
    };
    if (!local.contains(&src) && !local.contains(&dst)) || node.contains(&src) {
        return false;
    }
    // A side in audit mode lets through what it denies; only enforced denials count.
    let enforced = |ip: IpAddr| plan.endpoint_by_ip(ip).is_none_or(|e| !e.audit);
    let v = verdict::judge(plan, src, dst, protocol, port);
    (!v.egress.allows() && enforced(src)) || (!v.ingress.allows() && enforced(dst))
}

/// [`cut_denied`] with the node's own addresses given: connections from them are left alone.
/// Dumps the table, then deletes the denied entries for at most `budget`; the [`Cut`] holds
/// what is left when the sweep is incomplete.
pub fn sweep(
    ct: &mut impl ConnTable,
    plan: &NodePlan,
    node: &HashSet<IpAddr>,
    budget: Duration,
) -> Result<(Sweep, Cut), ConntrackError> {
    let t0 = Instant::now();
    let mut cut = Cut::default();
    let mut examined = 0;
    let local: HashSet<IpAddr> = plan
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    if !local.is_empty() {
        ct.dump(&mut |entry| {
            examined += 1;
            if denies(plan, &local, node, &entry) {
                if cut.doomed.len() < MAX_DOOMED {
                    cut.doomed.push(entry);
                } else {
                    cut.overflow = true;
                }
            }
        })?;
    }
    let denied = cut.doomed.len();
    let mut out = cut.go_on(ct, budget)?;
    out.examined = examined;
    out.took = t0.elapsed();
    tracing::debug!(
        examined,
        denied,
        cut = out.cut,
        complete = out.complete,
        "conntrack sweep"
    );
    Ok((out, cut))
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
        /// Size of each delete call.
        batches: Vec<usize>,
    }

    impl ConnTable for Table {
        fn dump(&mut self, each: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
            self.entries.iter().copied().for_each(each);
            Ok(())
        }

        fn delete(&mut self, entries: &[Entry]) -> Result<u64, ConntrackError> {
            let before = self.entries.len();
            self.entries.retain(|e| !entries.contains(e));
            self.deleted.extend_from_slice(entries);
            self.batches.push(entries.len());
            Ok((before - self.entries.len()) as u64)
        }
    }

    const NO_LIMIT: Duration = Duration::MAX;

    fn cut(table: &mut Table, node: &HashSet<IpAddr>) -> u64 {
        let (s, left) = sweep(table, &plan(), node, NO_LIMIT).unwrap();
        assert!(s.complete);
        assert_eq!(left.left(), 0);
        s.cut
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
            ingress: ingress.map(|a| std::sync::Arc::new(iso(a))),
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
        assert_eq!(cut(&mut table, &HashSet::new()), 2);
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
        assert_eq!(cut(&mut table, &node), 0);
        assert_eq!(table.entries, entries);
        // Policing the node's traffic (no node addresses): its connection is cut.
        assert_eq!(cut(&mut table, &HashSet::new()), 1);
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
        assert_eq!(cut(&mut table, &HashSet::new()), 1);
    }

    #[test]
    fn no_local_endpoint_no_dump() {
        struct Unreachable;
        impl ConnTable for Unreachable {
            fn dump(&mut self, _: &mut dyn FnMut(Entry)) -> Result<(), ConntrackError> {
                Err(ConntrackError::Malformed("dumped"))
            }
            fn delete(&mut self, _: &[Entry]) -> Result<u64, ConntrackError> {
                Err(ConntrackError::Malformed("deleted"))
            }
        }
        let empty = NodePlan::default();
        let (s, _) = sweep(&mut Unreachable, &empty, &HashSet::new(), NO_LIMIT).unwrap();
        assert_eq!((s.cut, s.complete), (0, true));
    }

    /// Many denied connections: deleted in batches, not one message each.
    fn denied_table(n: usize) -> Table {
        let entries = (0..n)
            .map(|i| {
                let mut e = conn("10.9.0.1", "10.0.0.2", 6, 81);
                e.orig.sport = 1024 + i as u16;
                e
            })
            .collect();
        Table {
            entries,
            ..Table::default()
        }
    }

    #[test]
    fn deletes_go_in_batches() {
        let n = 2 * conntrack::BATCH + 3;
        let mut table = denied_table(n);
        let (s, _) = sweep(&mut table, &plan(), &HashSet::new(), NO_LIMIT).unwrap();
        assert_eq!((s.examined, s.cut, s.complete), (n as u64, n as u64, true));
        assert_eq!(table.batches, [conntrack::BATCH, conntrack::BATCH, 3]);
        assert!(table.entries.is_empty());
    }

    /// Out of budget, a sweep stops between batches and says so; going on with what it left
    /// finishes without dumping the table again.
    #[test]
    fn a_sweep_out_of_budget_stops_between_batches_and_goes_on_later() {
        let n = 2 * conntrack::BATCH + 3;
        let mut table = denied_table(n);
        let (s, mut left) = sweep(&mut table, &plan(), &HashSet::new(), Duration::ZERO).unwrap();
        assert_eq!((s.cut, s.complete), (conntrack::BATCH as u64, false));
        assert_eq!(left.left(), n - conntrack::BATCH);
        // A connection that closed meanwhile is simply not counted.
        table.entries.pop();
        let s = left.go_on(&mut table, Duration::ZERO).unwrap();
        assert_eq!((s.cut, s.complete), (conntrack::BATCH as u64, false));
        let s = left.go_on(&mut table, NO_LIMIT).unwrap();
        assert_eq!((s.examined, s.cut, s.complete), (0, 2, true));
        assert!(table.entries.is_empty());
        assert_eq!(table.batches, [conntrack::BATCH, conntrack::BATCH, 3]);
    }
}
