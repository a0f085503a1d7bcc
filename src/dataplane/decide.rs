//! One tier's ordered ClusterNetworkPolicy rules, flattened into decision maps: for every
//! (peer address, protocol, port) the first rule that matches decides, so the kernel looks the
//! packet up once per tier instead of trying each rule in turn (100 policies of 25 rules would
//! otherwise be 2,500 lookups for the first packet of every connection).
//!
//! Pure: rules in, map elements out. The maps hold only what decides: `return` for Accept (and
//! for a Baseline Pass, which allows), `goto <drop chain>` for Deny. A region whose first match
//! is an Admin Pass, or that no rule matches, has no element, so the lookup misses and the pod's
//! chain goes on with the next tier: that is exactly what Pass means.
//!
//! Two maps per family, because `th dport` only means a port for TCP, UDP and SCTP:
//! - the tuple map `peer . l4proto . dport`, with every TCP, UDP and SCTP decision;
//! - the other map `peer`, for every other protocol (ICMP...), which only rules without
//!   `protocols` can match. It exists only when the list has such a rule.

use std::collections::BTreeMap;

use crate::policy::compile::TierRule;
use crate::policy::intervals::AddrSet;
use crate::policy::model::{Action, Protocol, Tier};

/// What one flattened region does: the index (in the list) of the rule whose verdict applies,
/// grouped so that regions of equal verdict merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Allow this direction (`return` from the pod's chain).
    Allow,
    /// The Deny rule at this index of the list drops (each Deny rule has its own drop chain,
    /// which names it in flow logs and counts per tier).
    Deny(usize),
}

fn decision(rule: &TierRule, index: usize) -> Option<Decision> {
    match (rule.action, rule.tier) {
        (Action::Accept, _) | (Action::Pass, Tier::Baseline) => Some(Decision::Allow),
        (Action::Deny, _) => Some(Decision::Deny(index)),
        // An Admin Pass leaves the tier: no element, the lookup misses.
        (Action::Pass, Tier::Admin) => None,
    }
}

/// A port range of one protocol and the addresses each decision covers on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSlice {
    pub protocol: Protocol,
    pub lo: u16,
    pub hi: u16,
    pub decisions: BTreeMap<Decision, AddrSet>,
}

/// A tier's rule list, flattened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flattened {
    /// TCP, UDP and SCTP: disjoint port slices, in protocol and port order.
    pub ports: Vec<PortSlice>,
    /// Every other protocol, by peer address; `None` when no rule of the list matches every
    /// protocol (the chain then needs no lookup for them).
    pub other: Option<BTreeMap<Decision, AddrSet>>,
}

/// The addresses rule `r` matches for `protocol` on every port of `[lo, hi]` (a slice no
/// boundary of any rule falls inside, so the answer is the same for each port of it).
fn matched_on(r: &TierRule, protocol: Protocol, lo: u32) -> AddrSet {
    let m = &r.matches;
    let mut parts: Vec<&AddrSet> = vec![&m.shared.any_port];
    if let Some(blocks) = m.shared.ports.get(&protocol) {
        let i = blocks.partition_point(|b| u32::from(b.hi) < lo);
        if let Some(b) = blocks.get(i).filter(|b| u32::from(b.lo) <= lo) {
            parts.push(&b.addrs);
        }
    }
    if r.own_ports
        .iter()
        .any(|&(p, port)| p == protocol && u32::from(port) == lo)
    {
        parts.push(&m.peers);
    }
    AddrSet::union_all(parts)
}

/// First match over `rules`, one address set per rule in order: what each rule claims that no
/// earlier rule matched.
fn first_match<'a>(
    rules: impl Iterator<Item = (usize, &'a TierRule, AddrSet)>,
) -> BTreeMap<Decision, AddrSet> {
    let mut seen = AddrSet::new();
    let mut out: BTreeMap<Decision, AddrSet> = BTreeMap::new();
    for (i, rule, matched) in rules {
        if matched.is_empty() {
            continue;
        }
        let claimed = matched.subtract(&seen);
        seen = seen.union(&matched);
        if claimed.is_empty() {
            continue;
        }
        if let Some(d) = decision(rule, i) {
            let e = out.entry(d).or_default();
            *e = e.union(&claimed);
        }
    }
    out
}

/// Splits `protocol`'s ports at every boundary of every rule and computes `at(lo)` for each
/// slice (the same for every port of a slice); neighbours with equal values merge.
fn by_slice<T: PartialEq>(
    rules: &[TierRule],
    protocol: Protocol,
    at: impl Fn(u32) -> T,
) -> Vec<(u16, u16, T)> {
    // As u32 so that 65535 + 1 fits.
    let mut cuts: Vec<u32> = vec![0, 65536];
    for r in rules {
        if let Some(blocks) = r.matches.shared.ports.get(&protocol) {
            cuts.extend(
                blocks
                    .iter()
                    .flat_map(|b| [u32::from(b.lo), u32::from(b.hi) + 1]),
            );
        }
        for &(p, port) in &r.own_ports {
            if p == protocol {
                cuts.extend([u32::from(port), u32::from(port) + 1]);
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut slices: Vec<(u16, u16, T)> = Vec::new();
    for w in cuts.windows(2) {
        let value = at(w[0]);
        // Both bounds come from u16 values (the last slice ends at 65535).
        let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
        match slices.last_mut() {
            Some(last) if last.2 == value => last.1 = hi,
            _ => slices.push((lo, hi, value)),
        }
    }
    slices
}

/// Flattens `rules` (one tier, one direction, already in evaluation order).
pub fn flatten(rules: &[TierRule]) -> Flattened {
    let mut ports = Vec::new();
    for protocol in Protocol::ALL {
        let slices = by_slice(rules, protocol, |lo| {
            first_match(
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i, r, matched_on(r, protocol, lo))),
            )
        });
        ports.extend(slices.into_iter().filter(|(_, _, d)| !d.is_empty()).map(
            |(lo, hi, decisions)| PortSlice {
                protocol,
                lo,
                hi,
                decisions,
            },
        ));
    }
    let other = rules.iter().any(|r| r.matches.all_ports).then(|| {
        first_match(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| (i, r, r.matches.shared.any_port.clone())),
        )
    });
    Flattened { ports, other }
}

/// Everything some rule of `rules` matches, whatever its action: what a later rule that
/// learns its addresses at run time (`domainNames`) must leave to them, since the first match
/// decides. TCP, UDP and SCTP by port slice; other protocols by address (rules without
/// `protocols`), which the port slices also cover for TCP, UDP and SCTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub ports: Vec<(Protocol, u16, u16, AddrSet)>,
    pub other: AddrSet,
}

pub fn claimed(rules: &[TierRule]) -> Claimed {
    let mut ports = Vec::new();
    for protocol in Protocol::ALL {
        let slices = by_slice(rules, protocol, |lo| {
            AddrSet::union_all(
                &rules
                    .iter()
                    .map(|r| matched_on(r, protocol, lo))
                    .collect::<Vec<_>>(),
            )
        });
        ports.extend(
            slices
                .into_iter()
                .filter(|(_, _, a)| !a.is_empty())
                .map(|(lo, hi, a)| (protocol, lo, hi, a)),
        );
    }
    let other = AddrSet::union_all(rules.iter().map(|r| &r.matches.shared.any_port));
    Claimed { ports, other }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::policy::compile::ClusterRuleMatch;
    use crate::policy::intervals::AllowedBuilder;
    use crate::policy::model::{ClusterPolicyKey, ClusterPolicyKind};
    use proptest::prelude::*;

    fn addrs(list: &[&str]) -> AddrSet {
        AddrSet::from_addrs(list.iter().map(|a| a.parse::<IpAddr>().unwrap()))
    }

    fn rule(
        tier: Tier,
        action: Action,
        peers: &[&str],
        ports: Option<(Protocol, u16, u16)>,
        own: &[(Protocol, u16)],
    ) -> TierRule {
        let peers = addrs(peers);
        let mut b = AllowedBuilder::default();
        match ports {
            None if own.is_empty() => b.add_any_port(peers.clone()),
            None => {}
            Some((p, lo, hi)) => b.add_ports(p, lo, hi, peers.clone()),
        }
        TierRule {
            policy: ClusterPolicyKey {
                kind: ClusterPolicyKind::ClusterNetworkPolicy,
                name: "p".into(),
            },
            tier,
            priority: Some(0),
            rule: 0,
            name: None,
            action,
            matches: Arc::new(ClusterRuleMatch {
                all_ports: ports.is_none() && own.is_empty(),
                peers,
                shared: b.finish(),
                named_ingress: if own.is_empty() {
                    vec![]
                } else {
                    vec!["http".into()]
                },
                domains: Vec::new(),
                port_ranges: Vec::new(),
            }),
            own_ports: own.to_vec(),
        }
    }

    /// What the flattened maps decide for one packet, as the kernel would look it up.
    fn lookup(
        f: &Flattened,
        peer: IpAddr,
        protocol: Option<Protocol>,
        port: u16,
    ) -> Option<Decision> {
        let hit = |m: &BTreeMap<Decision, AddrSet>| {
            m.iter().find(|(_, a)| a.contains(peer)).map(|(d, _)| *d)
        };
        match protocol {
            Some(p) => f
                .ports
                .iter()
                .find(|s| s.protocol == p && s.lo <= port && port <= s.hi)
                .and_then(|s| hit(&s.decisions)),
            None => f.other.as_ref().and_then(hit),
        }
    }

    /// The reference: the rules tried one by one, as `verdict` (simulate, explain) does.
    fn linear(
        rules: &[TierRule],
        peer: IpAddr,
        protocol: Option<Protocol>,
        port: u16,
    ) -> Option<Decision> {
        for (i, r) in rules.iter().enumerate() {
            let m = match protocol {
                Some(p) => r.matches(peer, p, port),
                None => r.matches.all_ports && r.matches.peers.contains(peer),
            };
            if m {
                return decision(r, i);
            }
        }
        None
    }

    #[test]
    fn an_earlier_pass_shadows_a_later_deny_and_leaves_no_element() {
        let rules = vec![
            rule(
                Tier::Admin,
                Action::Pass,
                &["10.0.0.1"],
                Some((Protocol::Tcp, 80, 80)),
                &[],
            ),
            rule(
                Tier::Admin,
                Action::Deny,
                &["10.0.0.1", "10.0.0.2"],
                None,
                &[],
            ),
        ];
        let f = flatten(&rules);
        let a1: IpAddr = "10.0.0.1".parse().unwrap();
        let a2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(lookup(&f, a1, Some(Protocol::Tcp), 80), None);
        assert_eq!(
            lookup(&f, a1, Some(Protocol::Tcp), 81),
            Some(Decision::Deny(1))
        );
        assert_eq!(
            lookup(&f, a2, Some(Protocol::Tcp), 80),
            Some(Decision::Deny(1))
        );
        // ICMP meets only the rule without protocols.
        assert_eq!(lookup(&f, a1, None, 0), Some(Decision::Deny(1)));
    }

    #[test]
    fn accepts_of_different_rules_merge_and_slices_merge() {
        let rules = vec![
            rule(
                Tier::Baseline,
                Action::Accept,
                &["10.0.0.1"],
                Some((Protocol::Udp, 10, 20)),
                &[],
            ),
            rule(
                Tier::Baseline,
                Action::Pass,
                &["10.0.0.2"],
                Some((Protocol::Udp, 21, 30)),
                &[],
            ),
        ];
        let f = flatten(&rules);
        assert!(f.other.is_none());
        assert_eq!(f.ports.len(), 2);
        assert_eq!(f.ports[0].decisions.len(), 1);
    }

    #[test]
    fn own_named_ports_match_the_peers_on_that_port_only() {
        let rules = vec![rule(
            Tier::Admin,
            Action::Deny,
            &["10.0.0.3"],
            None,
            &[(Protocol::Tcp, 8080)],
        )];
        let f = flatten(&rules);
        let a: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(
            lookup(&f, a, Some(Protocol::Tcp), 8080),
            Some(Decision::Deny(0))
        );
        assert_eq!(lookup(&f, a, Some(Protocol::Tcp), 8081), None);
        assert_eq!(lookup(&f, a, Some(Protocol::Udp), 8080), None);
    }

    fn arb_rule() -> impl Strategy<Value = TierRule> {
        (
            prop::bool::ANY,
            0..3usize,
            prop::collection::vec(0..4u8, 0..3),
            prop::option::of((0..3usize, 0..6u16, 0..4u16)),
            prop::option::of(0..6u16),
        )
            .prop_map(|(admin, action, peers, ports, own)| {
                let tier = if admin { Tier::Admin } else { Tier::Baseline };
                let action = [Action::Accept, Action::Deny, Action::Pass][action];
                let peers: Vec<String> = peers.iter().map(|p| format!("10.0.0.{p}")).collect();
                let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
                let ports = ports.map(|(p, lo, len)| (Protocol::ALL[p], lo, lo + len));
                let own: Vec<(Protocol, u16)> =
                    own.map(|o| (Protocol::Tcp, o)).into_iter().collect();
                let ports = if own.is_empty() { ports } else { None };
                rule(tier, action, &peers, ports, &own)
            })
    }

    proptest! {
        /// The flattened maps decide every packet exactly as trying the rules in order does.
        #[test]
        fn flattening_agrees_with_first_match(rules in prop::collection::vec(arb_rule(), 0..8)) {
            let f = flatten(&rules);
            for peer in 0..5u8 {
                let peer: IpAddr = format!("10.0.0.{peer}").parse().unwrap();
                for port in 0..11u16 {
                    for p in Protocol::ALL {
                        prop_assert_eq!(lookup(&f, peer, Some(p), port), linear(&rules, peer, Some(p), port));
                    }
                }
                prop_assert_eq!(lookup(&f, peer, None, 0), linear(&rules, peer, None, 0));
            }
        }

        /// `claimed` covers exactly what some rule matches.
        #[test]
        fn claimed_is_the_union_of_the_matches(rules in prop::collection::vec(arb_rule(), 0..8)) {
            let c = claimed(&rules);
            for peer in 0..5u8 {
                let peer: IpAddr = format!("10.0.0.{peer}").parse().unwrap();
                for port in 0..11u16 {
                    for p in Protocol::ALL {
                        let hit = c.ports.iter().any(|(q, lo, hi, a)| *q == p && *lo <= port && port <= *hi && a.contains(peer));
                        prop_assert_eq!(hit, rules.iter().any(|r| r.matches(peer, p, port)));
                    }
                }
                let any = rules.iter().any(|r| r.matches.all_ports && r.matches.peers.contains(peer));
                prop_assert_eq!(c.other.contains(peer), any);
            }
        }
    }
}
