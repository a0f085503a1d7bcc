//! Connection verdicts from the compiled plan: what `simulate` predicts and `explain` explains.
//!
//! A verdict reads only the compiler's output (each endpoint's merged `Allowed` sets, exactly what
//! the dataplane programs), so what we explain is what we enforce. Both sides are judged: the
//! client's egress and the server's ingress must each allow a new connection.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::policy::compile::{Endpoint, Isolation, NodePlan, TierRule};
use crate::policy::index::ClusterIndex;
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicyKey, ClusterPort, ClusterRule, Direction, NamespaceScope,
    ObjectKey, Peer, PortMatch, Protocol, Rule, Selector, Tier,
};

/// A ClusterNetworkPolicy rule, as explain and the verdict name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterRuleRef {
    pub tier: Tier,
    pub policy: ClusterPolicyKey,
    /// The rule's index in its direction's list.
    pub index: usize,
    /// Its `name`, else `#index`.
    pub rule: String,
}

impl ClusterRuleRef {
    fn of(r: &TierRule) -> Self {
        ClusterRuleRef {
            tier: r.tier,
            policy: r.policy.clone(),
            index: r.rule,
            rule: r.label(),
        }
    }
}

impl std::fmt::Display for ClusterRuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} rule {}",
            self.tier,
            self.policy.short(),
            self.rule
        )
    }
}

/// One side's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum SideVerdict {
    /// The pod is not selected by any policy for this direction (or an Admin Pass, or a
    /// Baseline Pass or no Baseline match, left it to the default: allowed).
    NotIsolated,
    /// The address is not a pod endpoint we know (a remote or external address): this side
    /// is not ours to judge.
    NotAPod,
    Allowed {
        isolated_by: Vec<ObjectKey>,
        /// (policy, rule index) of every rule that allows the connection.
        allowed_by: Vec<(ObjectKey, usize)>,
    },
    Denied {
        isolated_by: Vec<ObjectKey>,
    },
    /// A ClusterNetworkPolicy rule decided: its first matching rule with `Accept` or `Deny`,
    /// or a Baseline `Pass` (which allows).
    Cluster {
        action: Action,
        by: ClusterRuleRef,
    },
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        match self {
            SideVerdict::Denied { .. } => false,
            SideVerdict::Cluster { action, .. } => *action != Action::Deny,
            _ => true,
        }
    }

    fn judge(isolation: Option<&Isolation>, peer: IpAddr, protocol: Protocol, port: u16) -> Self {
        let Some(iso) = isolation else {
            return SideVerdict::NotIsolated;
        };
        let allowed_by: Vec<(ObjectKey, usize)> = iso
            .allowing_rules(peer, protocol, port)
            .map(|r| (r.policy.clone(), r.rule))
            .collect();
        // The merged set is what is programmed; the per-rule view must agree with it.
        debug_assert_eq!(
            !allowed_by.is_empty(),
            iso.allowed.allows(peer, protocol, port)
        );
        if iso.allowed.allows(peer, protocol, port) {
            SideVerdict::Allowed {
                isolated_by: iso.policies.clone(),
                allowed_by,
            }
        } else {
            SideVerdict::Denied {
                isolated_by: iso.policies.clone(),
            }
        }
    }
}

/// One direction at one endpoint: the Admin tier, then NetworkPolicy, then the Baseline tier.
/// Returns the verdict and the `Pass` rules that were passed over on the way.
pub fn judge_direction(
    endpoint: &Endpoint,
    direction: Direction,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> (SideVerdict, Vec<ClusterRuleRef>) {
    let rules = endpoint.cluster(direction);
    let mut passed = Vec::new();
    // A pod reaching its own address is not subject to cluster policies (and its packets
    // never leave its network namespace, so the dataplane never sees them).
    let hairpin = endpoint.ips.contains(&peer);
    if !hairpin && let Some(r) = rules.admin.iter().find(|r| r.matches(peer, protocol, port)) {
        match r.action {
            Action::Pass => passed.push(ClusterRuleRef::of(r)),
            action => {
                return (
                    SideVerdict::Cluster {
                        action,
                        by: ClusterRuleRef::of(r),
                    },
                    passed,
                );
            }
        }
    }
    if let Some(iso) = endpoint.isolation(direction) {
        return (SideVerdict::judge(Some(iso), peer, protocol, port), passed);
    }
    if !hairpin
        && let Some(r) = rules
            .baseline
            .iter()
            .find(|r| r.matches(peer, protocol, port))
    {
        return (
            SideVerdict::Cluster {
                action: r.action,
                by: ClusterRuleRef::of(r),
            },
            passed,
        );
    }
    (SideVerdict::NotIsolated, passed)
}

/// The verdict for one new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
    /// ClusterNetworkPolicy `Pass` rules each side passed over before its verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_passed: Vec<ClusterRuleRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_passed: Vec<ClusterRuleRef>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Judges a connection between two addresses, each side by the endpoint owning it (if any).
pub fn judge(plan: &NodePlan, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Verdict {
    let (egress, egress_passed) = match plan.endpoint_by_ip(src) {
        Some(e) => judge_direction(e, Direction::Egress, dst, protocol, port),
        None => (SideVerdict::NotAPod, Vec::new()),
    };
    let (ingress, ingress_passed) = match plan.endpoint_by_ip(dst) {
        Some(e) => judge_direction(e, Direction::Ingress, src, protocol, port),
        None => (SideVerdict::NotAPod, Vec::new()),
    };
    Verdict {
        src,
        dst,
        protocol,
        port,
        egress,
        ingress,
        egress_passed,
        ingress_passed,
    }
}

/// The addresses a connection between two endpoints would use: the destination's first address
/// whose family the source also has. `None` when they share no family.
pub fn addresses(from: &Endpoint, to: &Endpoint) -> Option<(IpAddr, IpAddr)> {
    to.ips.iter().find_map(|dst| {
        from.ips
            .iter()
            .find(|src| src.is_ipv4() == dst.is_ipv4())
            .map(|src| (*src, *dst))
    })
}

/// Judges a new connection between two endpoints of the plan.
pub fn judge_pods(
    from: &Endpoint,
    to: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> Option<Verdict> {
    let (src, dst) = addresses(from, to)?;
    let (egress, egress_passed) = judge_direction(from, Direction::Egress, dst, protocol, port);
    let (ingress, ingress_passed) = judge_direction(to, Direction::Ingress, src, protocol, port);
    Some(Verdict {
        src,
        dst,
        protocol,
        port,
        egress,
        ingress,
        egress_passed,
        ingress_passed,
    })
}

fn scope_words(scope: &NamespaceScope) -> String {
    match scope {
        NamespaceScope::Own(ns) => format!("namespace {ns}"),
        NamespaceScope::Selected(sel) if sel.is_everything() => "every namespace".into(),
        NamespaceScope::Selected(sel) => format!("namespaces matching {sel}"),
    }
}

/// A rule in plain words, e.g. "from pods matching app=web in namespace prod, on 80/TCP".
pub fn describe_rule(rule: &Rule, direction: Direction) -> String {
    let prep = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peers = match &rule.peers {
        None => "anywhere".to_string(),
        Some(peers) => peers
            .iter()
            .map(|p| match p {
                Peer::Pods { namespaces, pods } if pods.is_everything() => {
                    format!("every pod in {}", scope_words(namespaces))
                }
                Peer::Pods { namespaces, pods } => {
                    format!("pods matching {pods} in {}", scope_words(namespaces))
                }
                Peer::IpBlock { cidr, except } if except.is_empty() => format!("{cidr}"),
                Peer::IpBlock { cidr, except } => format!(
                    "{cidr} except {}",
                    except
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let ports = match &rule.ports {
        None => "any port".to_string(),
        Some(ports) => ports
            .iter()
            .map(|p| match &p.port {
                PortMatch::All => format!("any {} port", p.protocol),
                PortMatch::Range(lo, hi) if lo == hi => format!("{lo}/{}", p.protocol),
                PortMatch::Range(lo, hi) => format!("{lo}-{hi}/{}", p.protocol),
                PortMatch::Named(n) => format!("named port {n}/{}", p.protocol),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("{prep} {peers}, on {ports}")
}

fn selector_words(sel: &Selector, what: &str) -> String {
    if sel.is_everything() {
        format!("every {what}")
    } else {
        format!("{what}s matching {sel}")
    }
}

/// A cluster policy rule in plain words, e.g. "Deny to 10.0.0.0/8, on 80/TCP".
pub fn describe_cluster_rule(rule: &ClusterRule, direction: Direction) -> String {
    let prep = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peers = rule
        .peers
        .iter()
        .map(|p| match p {
            ClusterPeer::Namespaces(ns) => {
                format!("every pod in {}", selector_words(ns, "namespace"))
            }
            ClusterPeer::Pods { namespaces, pods } => format!(
                "{} in {}",
                selector_words(pods, "pod"),
                selector_words(namespaces, "namespace")
            ),
            ClusterPeer::Networks(nets) => nets
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            ClusterPeer::Nodes(sel) => {
                format!("the addresses of {}", selector_words(sel, "node"))
            }
            ClusterPeer::DomainNames(names) => format!(
                "domain names {} (the addresses their DNS answers carried, while their TTL lasts)",
                names.join(", ")
            ),
            ClusterPeer::Unknown(fields) => format!(
                "a peer with unknown field(s) {} (fails closed: {})",
                fields.join(", "),
                if rule.action == Action::Accept {
                    "matches nothing"
                } else {
                    "matches everything"
                }
            ),
        })
        .collect::<Vec<_>>()
        .join(" or ");
    let ports = match &rule.protocols {
        None => "any port".to_string(),
        Some(list) if list.is_empty() => "no port nftpol knows".to_string(),
        Some(list) => list
            .iter()
            .map(|p| match p {
                ClusterPort::Ports {
                    protocol,
                    start,
                    end,
                } if start == end => format!("{start}/{protocol}"),
                ClusterPort::Ports {
                    protocol,
                    start,
                    end,
                } => format!("{start}-{end}/{protocol}"),
                ClusterPort::Named(n) => format!("named port {n}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("{} {prep} {peers}, on {ports}", rule.action)
}

fn cluster_rule_words(index: &ClusterIndex, by: &ClusterRuleRef, direction: Direction) -> String {
    let policy = index.cluster_policy(&by.policy);
    let priority = match policy.and_then(|p| p.priority) {
        Some(p) => format!(", priority {p}"),
        None => String::new(),
    };
    let words = policy
        .and_then(|p| p.rules(direction).get(by.index))
        .map(|r| describe_cluster_rule(r, direction))
        .unwrap_or_default();
    format!(
        "{} {} ({} tier{priority}) {direction} rule {}: {words}",
        by.policy.kind, by.policy.name, by.tier, by.rule
    )
}

#[allow(clippy::too_many_arguments)]
fn side_words(
    out: &mut String,
    index: &ClusterIndex,
    direction: Direction,
    who: &str,
    side: &SideVerdict,
    isolation: Option<&Isolation>,
    endpoint: Option<&Endpoint>,
    passed: &[ClusterRuleRef],
) {
    for p in passed {
        let _ = writeln!(
            out,
            "  {direction} of {who}: passed over {}, which leaves the Admin tier",
            cluster_rule_words(index, p, direction)
        );
    }
    let cluster = endpoint.map(|e| e.cluster(direction));
    let _ = match side {
        SideVerdict::Cluster { action, by } => {
            let what = match (action, by.tier) {
                (Action::Accept, Tier::Admin) => {
                    "ALLOWED by the Admin tier (NetworkPolicy and Baseline are not consulted)"
                }
                (Action::Accept, Tier::Baseline) => "ALLOWED by the Baseline tier",
                (Action::Pass, _) => {
                    "ALLOWED: the Baseline tier passes it to the default, which allows"
                }
                (Action::Deny, _) => "DENIED (dropped silently)",
            };
            writeln!(
                out,
                "  {direction} of {who}: {what}: {}",
                cluster_rule_words(index, by, direction)
            )
        }
        SideVerdict::NotIsolated if cluster.is_some_and(|c| !c.policies.is_empty()) => {
            let c = cluster.map(|c| c.policies.len()).unwrap_or(0);
            writeln!(
                out,
                "  {direction} of {who}: ALLOWED: no Admin rule of the {c} ClusterNetworkPolicies selecting it decides, no NetworkPolicy isolates it for {direction}, and no Baseline rule decides: the default allows"
            )
        }
        SideVerdict::NotAPod => writeln!(
            out,
            "  {direction} of {who}: not a pod nftpol knows; nothing to check on this side"
        ),
        SideVerdict::NotIsolated => writeln!(
            out,
            "  {direction} of {who}: ALLOWED: no NetworkPolicy selects it for {direction}, so it is not isolated"
        ),
        SideVerdict::Allowed {
            isolated_by,
            allowed_by,
        } => {
            let _ = writeln!(
                out,
                "  {direction} of {who}: ALLOWED: isolated by {}; allowed by:",
                join_keys(isolated_by)
            );
            for (policy, rule) in allowed_by {
                let words = index
                    .policy(policy)
                    .and_then(|p| p.rules(direction).get(*rule))
                    .map(|r| describe_rule(r, direction))
                    .unwrap_or_default();
                let _ = writeln!(out, "    - {policy} {direction} rule {rule}: {words}");
            }
            Ok(())
        }
        SideVerdict::Denied { isolated_by } => {
            let _ = writeln!(
                out,
                "  {direction} of {who}: DENIED: isolated by {}, and no rule of {} allows it",
                join_keys(isolated_by),
                if isolated_by.len() == 1 { "it" } else { "them" }
            );
            if let Some(iso) = isolation {
                for policy in &iso.policies {
                    let Some(p) = index.policy(policy) else {
                        continue;
                    };
                    let rules = p.rules(direction);
                    if rules.is_empty() {
                        let _ = writeln!(out, "    - {policy}: no {direction} rules (denies all)");
                    }
                    for (i, r) in rules.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "    - {policy} {direction} rule {i}: {}",
                            describe_rule(r, direction)
                        );
                    }
                }
            }
            Ok(())
        }
    };
}

fn join_keys(keys: &[ObjectKey]) -> String {
    keys.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The explanation `nftpol explain` prints: the verdict, then the egress side, then ingress.
pub fn explain_text(
    index: &ClusterIndex,
    plan: &NodePlan,
    from: &str,
    to: &str,
    verdict: &Verdict,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{from} ({}) -> {to} ({}) {}/{}: {}",
        verdict.src,
        verdict.dst,
        verdict.port,
        verdict.protocol,
        if verdict.allowed() {
            "ALLOWED"
        } else {
            "DENIED"
        }
    );
    let src = plan.endpoint_by_ip(verdict.src);
    let dst = plan.endpoint_by_ip(verdict.dst);
    side_words(
        &mut out,
        index,
        Direction::Egress,
        from,
        &verdict.egress,
        src.and_then(|e| e.egress.as_deref()),
        src,
        &verdict.egress_passed,
    );
    audit_words(&mut out, src, &verdict.egress);
    side_words(
        &mut out,
        index,
        Direction::Ingress,
        to,
        &verdict.ingress,
        dst.and_then(|e| e.ingress.as_deref()),
        dst,
        &verdict.ingress_passed,
    );
    audit_words(&mut out, dst, &verdict.ingress);
    out
}

/// A denial in a namespace in audit mode is logged and let through, not dropped.
fn audit_words(out: &mut String, endpoint: Option<&Endpoint>, side: &SideVerdict) {
    if let Some(e) = endpoint.filter(|e| e.audit)
        && !side.allows()
    {
        let _ = writeln!(
            out,
            "    namespace {} is in audit mode (nftpol.io/enforcement: audit): this is logged and let through, not dropped",
            e.pod.namespace
        );
    }
}
