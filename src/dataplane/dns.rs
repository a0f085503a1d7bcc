//! The kernel side of ClusterNetworkPolicy `domainNames`: the learned-address sets, the rules
//! that match them in the pods' chains, the hold of DNS answers in an NFQUEUE, and the
//! transaction that adds learned addresses.
//!
//! - Each `domainNames` rule used on the node gets one set per family, `d4/<rule base>`
//!   (`type ipv4_addr; flags timeout`), shared by its subject pods like the other cluster rule
//!   sets. Its elements are the DNS reader's (each with the answer's clamped TTL as timeout):
//!   the ruleset declares the set empty, and neither a reconcile nor the drift check looks at
//!   its elements.
//! - In a subject pod's egress chain, at the rule's position: `ip daddr @d4/<base> [ports]
//!   return`, one rule per entry of the rule's `protocols`.
//! - The hold: base chain rules `ip daddr @dnspods_v4 udp sport 53 queue num N bypass` (and TCP)
//!   before `ct state established,related accept` (an answer is a reply: it would be accepted
//!   before any later rule sees it). Only answers to pods with a `domainNames` rule leave the
//!   kernel. `bypass`: with no reader bound to the queue the answer passes and nothing is
//!   learned, so the rule's connections fail closed while DNS keeps working.
//!   Hooks: forward (resolver in another pod or off the node), output (a resolver on the host
//!   network, such as NodeLocal DNSCache).
//!   The queue statement is the xtables `NFQUEUE` target through nft_compat: kernels built
//!   without `CONFIG_NFT_QUEUE` (as some minimal ones are) have it, and `nft` lists it as
//!   `queue num N bypass` all the same.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::policy::compile::TierRule;
use crate::policy::intervals::AddrSet;
use crate::policy::model::{ClusterPolicyKey, Direction, ObjectKey, Protocol, Tier};

use super::ruleset::{
    AddrField, Chain, Family, Guard, Hook, Jump, NamedSet, Options, PodDirection, Rule, SetKind,
};

/// Name of the set of the addresses of pods with a `domainNames` rule, by family.
pub fn pods_set_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "dnspods_v4",
        Family::V6 => "dnspods_v6",
    }
}

/// `d4/<rule base>`: a rule's learned addresses of one family.
pub fn learned_set_name(base: &str, family: Family) -> String {
    let d = match family {
        Family::V4 => '4',
        Family::V6 => '6',
    };
    format!("d{d}/{base}")
}

/// One `domainNames` rule used on the node: what the DNS reader needs to learn for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    pub policy: ClusterPolicyKey,
    pub tier: Tier,
    /// The rule's name, else `#index`.
    pub label: String,
    /// Its names, as written.
    pub names: Vec<String>,
    /// The subject pods whose chain looks the rule's sets up, and their addresses.
    pub pods: BTreeMap<ObjectKey, Vec<IpAddr>>,
}

/// The `domainNames` objects of a ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainObjects {
    /// Learned-address sets by name (declared empty).
    pub sets: BTreeMap<String, NamedSet>,
    /// Rules by their base name (`cluster_rule_base`).
    pub rules: BTreeMap<String, DomainRule>,
}

impl DomainObjects {
    /// The rules matching a cluster rule's learned addresses at its position in a pod's egress
    /// chain (none for a rule without `domainNames`), creating its sets.
    pub(super) fn rule(
        &mut self,
        r: &TierRule,
        base: &str,
        families: &[Family],
        verdict: &Jump,
        log: Option<super::ruleset::LogTo>,
        guard: Option<&dyn Fn(Family) -> Guard>,
    ) -> Vec<Rule> {
        let m = &r.matches;
        if m.domains.is_empty() {
            return Vec::new();
        }
        for family in [Family::V4, Family::V6] {
            let name = learned_set_name(base, family);
            self.sets.entry(name.clone()).or_insert(NamedSet {
                name,
                family,
                kind: SetKind::Learned,
                elements: Vec::new(),
            });
        }
        self.rules
            .entry(base.to_string())
            .or_insert_with(|| DomainRule {
                policy: r.policy.clone(),
                tier: r.tier,
                label: r.label(),
                names: m.domains.clone(),
                pods: BTreeMap::new(),
            });
        // `protocols` with a domainNames peer never has a named port (the API forbids it).
        let ports: Vec<Option<(Protocol, u16, u16)>> = if m.all_ports {
            vec![None]
        } else {
            m.port_ranges.iter().copied().map(Some).collect()
        };
        let mut rules = Vec::new();
        for &family in families {
            for p in &ports {
                rules.push(Rule::LearnedVerdict {
                    family,
                    field: AddrField::Daddr,
                    guard: guard.map(|g| g(family)),
                    set: learned_set_name(base, family),
                    ports: *p,
                    log: log.clone(),
                    verdict: verdict.clone(),
                });
            }
        }
        rules
    }

    /// Once every pod chain is built: which pods look each rule up, the set of their
    /// addresses, and the hold rules at the head of the base chains.
    pub(super) fn finish(
        &mut self,
        pods: &BTreeMap<String, PodDirection>,
        options: Options,
        base_chains: &mut Vec<Chain>,
        node_sets: &mut Vec<NamedSet>,
    ) {
        if self.rules.is_empty() {
            return;
        }
        for pd in pods.values() {
            if pd.direction != Direction::Egress {
                continue;
            }
            let used: BTreeSet<&str> = pd
                .chain
                .rules
                .iter()
                .filter_map(|r| match r {
                    Rule::LearnedVerdict { set, .. } => set.split_once('/').map(|(_, b)| b),
                    _ => None,
                })
                .collect();
            for base in used {
                if let Some(rule) = self.rules.get_mut(base) {
                    rule.pods.insert(pd.pod.clone(), pd.ips.clone());
                }
            }
        }
        let Some(queue) = options.dns_queue else {
            return;
        };
        let addrs = AddrSet::from_addrs(
            self.rules
                .values()
                .flat_map(|r| r.pods.values().flatten().copied()),
        );
        for family in [Family::V4, Family::V6] {
            let elements = super::ruleset::addr_elements(&addrs, family);
            node_sets.push(NamedSet {
                name: pods_set_name(family).to_string(),
                family,
                kind: SetKind::Addr,
                elements,
            });
        }
        let hold: Vec<Rule> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|family| {
                [Protocol::Udp, Protocol::Tcp].map(|protocol| Rule::DnsHold {
                    family,
                    protocol,
                    set: pods_set_name(family).to_string(),
                    queue,
                })
            })
            .collect();
        for chain in base_chains.iter_mut() {
            if chain.hook == Some(Hook::Forward) || chain.hook == Some(Hook::Output) {
                chain.rules.splice(0..0, hold.iter().cloned());
            }
        }
        if !base_chains.iter().any(|c| c.hook == Some(Hook::Output)) {
            base_chains.push(Chain {
                name: "output".into(),
                hook: Some(Hook::Output),
                rules: hold,
            });
        }
    }

    /// The learned set of `base` for `ip`'s family, if the rule exists.
    pub fn set_for(&self, base: &str, ip: &IpAddr) -> Option<&NamedSet> {
        self.sets.get(&learned_set_name(base, Family::of(ip)))
    }
}

/// One learned address: added to `set` for `timeout`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Learned {
    pub set: String,
    pub addr: IpAddr,
    pub timeout: Duration,
}

/// Whether the kernel has the NFQUEUE target the hold needs (nft_compat and xt_NFQUEUE), tried
/// in a transaction that leaves the ruleset as it was. `Ok(false)`: it refused the rule.
pub fn queue_target_supported(queue: u16) -> Result<bool, super::DataplaneError> {
    let sock = super::netlink::NlSocket::open()?;
    let mut tx = super::program::Tx::new(false);
    tx.probe_queue_target("dnsprobe", queue)?;
    let (batch, _) = tx.finish();
    let reply = sock.send_batch(&batch)?;
    Ok(reply.errors.is_empty())
}

/// The netlink socket the DNS reader commits learned addresses with, separate from the
/// enforcer's so that a hold never waits for a reconcile's transaction.
pub struct LearnSocket {
    sock: super::netlink::NlSocket,
}

impl LearnSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, super::DataplaneError> {
        Ok(Self {
            sock: super::netlink::NlSocket::open()?,
        })
    }

    /// Adds every address to its set with its timeout, in one transaction, and returns once the
    /// kernel has committed it (nfnetlink commits within `sendmsg`; its errors come back with
    /// it). An address already in its set gets the new timeout: it is added (no error if
    /// present), deleted and added again, atomically.
    pub fn learn(&self, learned: &[Learned]) -> Result<(), super::DataplaneError> {
        if learned.is_empty() {
            return Ok(());
        }
        let mut tx = super::program::Tx::new(false);
        let mut by_set: BTreeMap<&str, Vec<&Learned>> = BTreeMap::new();
        for l in learned {
            by_set.entry(l.set.as_str()).or_default().push(l);
        }
        for (name, items) in by_set {
            let Some(first) = items.first() else { continue };
            let set = NamedSet {
                name: name.to_string(),
                family: Family::of(&first.addr),
                kind: SetKind::Learned,
                elements: Vec::new(),
            };
            let bare: Vec<(IpAddr, Option<u64>)> = items.iter().map(|l| (l.addr, None)).collect();
            let timed: Vec<(IpAddr, Option<u64>)> = items
                .iter()
                .map(|l| {
                    let ms = u64::try_from(l.timeout.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    (l.addr, Some(ms))
                })
                .collect();
            tx.learned_elements(&set, &bare, super::program::ElemOp::Add)?;
            tx.learned_elements(&set, &bare, super::program::ElemOp::Del)?;
            tx.learned_elements(&set, &timed, super::program::ElemOp::Add)?;
        }
        let (batch, labels) = tx.finish();
        let reply = self.sock.send_batch_with(&batch, true)?;
        if !reply.errors.is_empty() {
            let seqs = batch.sequence_numbers();
            return Err(super::DataplaneError::Rejected(
                reply
                    .errors
                    .iter()
                    .map(|e| super::Rejected {
                        object: labels.resolve(&seqs, e.seq),
                        errno: e.errno,
                        detail: e.detail.clone(),
                    })
                    .collect(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::render::{render, rule_text};
    use crate::dataplane::ruleset::Ruleset;
    use crate::policy::compile::{Scope, compile};
    use crate::policy::index::ClusterIndex;
    use serde_json::json;

    fn plan(policy_egress: serde_json::Value) -> crate::policy::compile::NodePlan {
        let docs = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "namespace": "a", "labels": {"app": "p"}},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.1"}}),
            json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": "d"},
                   "spec": {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                            "egress": policy_egress}}),
        ];
        let loaded = crate::source::manifest::load_values("t", docs).unwrap();
        assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
        compile(
            &ClusterIndex::from_state(&loaded.state),
            &Scope::Node("n1".into()),
        )
    }

    /// The rules of the (only) pod chain, as nft lists them.
    fn first_chain(rs: &Ruleset) -> Vec<String> {
        let pod = rs.pods.values().next().expect("a pod chain");
        pod.chain.rules.iter().map(rule_text).collect()
    }

    #[test]
    fn learned_rules_sit_at_the_rule_position_and_the_hold_needs_a_queue() {
        let p = plan(json!([
            {"action": "Accept", "to": [{"domainNames": ["a.example"]}, {"networks": ["192.0.2.0/24"]}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]));
        let rs = Ruleset::build(&p, Options::default());
        let chain = first_chain(&rs);
        // The learned addresses first (the rule is the tier's first: no guard), then the
        // tier's decision maps with the static peers of both rules.
        assert_eq!(chain[0], "ip daddr @d4/c/d/e0 return");
        assert!(
            chain[1].starts_with("ip daddr . meta l4proto . th dport vmap @cbe4t/"),
            "{chain:?}"
        );
        assert!(chain[2].contains("vmap @cbe4o/"), "{chain:?}");
        assert_eq!(chain.len(), 3);
        // No queue: the sets and lookups exist, nothing holds answers (fail closed).
        assert!(!render(&rs).contains("queue"));
        assert_eq!(rs.domains.rules["c/d/e0"].pods.len(), 1);
        let held = Ruleset::build(
            &p,
            Options {
                dns_queue: Some(9),
                ..Options::default()
            },
        );
        let text = render(&held);
        assert!(
            text.contains("ip daddr @dnspods_v4 udp sport 53 queue num 9 bypass"),
            "{text}"
        );
        // A diff between rulesets never touches learned elements.
        let tx = crate::dataplane::program::diff(&held, &held, true)
            .unwrap()
            .unwrap();
        assert!(
            tx.labels().as_slice().iter().all(|l| !l.contains("d4/")),
            "{:?}",
            tx.labels().as_slice()
        );
        // Without any domainNames rule: no dns objects at all, the table is as before.
        let plain = Ruleset::build(
            &plan(json!([{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}])),
            Options {
                dns_queue: Some(9),
                ..Options::default()
            },
        );
        assert!(plain.domains.sets.is_empty() && !render(&plain).contains("dnspods"));
    }

    /// A `domainNames` rule after other rules of its tier: its learned addresses only decide
    /// what none of those rules matches (the first match wins), through guard sets.
    #[test]
    fn learned_rules_leave_to_earlier_rules_what_they_match() {
        let p = plan(json!([
            {"action": "Deny", "to": [{"networks": ["198.51.100.0/24"]}],
             "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
            {"action": "Pass", "to": [{"networks": ["203.0.113.7/32"]}]},
            {"action": "Accept", "to": [{"domainNames": ["*.example.com"]}]}]));
        let rs = Ruleset::build(&p, Options::default());
        let chain = first_chain(&rs);
        let guard = chain[0].clone();
        assert!(
            guard.starts_with("ip daddr . meta l4proto . th dport != @cbe4gt/")
                && guard.contains(" ip daddr != @cbe4go/")
                && guard.ends_with(" ip daddr @d4/c/d/e2 return"),
            "{chain:?}"
        );
        let set = |prefix: &str| {
            rs.sets()
                .find(|s| s.name.starts_with(prefix))
                .map(|s| {
                    s.elements
                        .iter()
                        .map(crate::dataplane::render::element_text)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        assert!(
            set("cbe4gt/").contains(&"198.51.100.0/24 . tcp . 443".to_string()),
            "{:?}",
            set("cbe4gt/")
        );
        assert!(set("cbe4gt/").contains(&"203.0.113.7 . udp . 0-65535".to_string()));
        assert_eq!(set("cbe4go/"), ["203.0.113.7"]);
    }
}
