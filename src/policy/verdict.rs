//! Connection verdicts from the compiled plan: what `simulate` predicts and `explain` explains.
//!
//! A verdict reads only the compiler's output (each endpoint's merged `Allowed` sets, exactly what
//! the dataplane programs), so what we explain is what we enforce. Both sides are judged: the
//! client's egress and the server's ingress must each allow a new connection.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::policy::compile::{Endpoint, Isolation, NodePlan};
use crate::policy::index::ClusterIndex;
use crate::policy::model::{Direction, NamespaceScope, ObjectKey, Peer, PortMatch, Protocol, Rule};

/// One side's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum SideVerdict {
    /// The pod is not selected by any policy for this direction.
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
}

impl SideVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, SideVerdict::Denied { .. })
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

/// The verdict for one new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Judges a connection between two addresses, each side by the endpoint owning it (if any).
pub fn judge(plan: &NodePlan, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> Verdict {
    let egress = match plan.endpoint_by_ip(src) {
        Some(e) => SideVerdict::judge(e.egress.as_ref(), dst, protocol, port),
        None => SideVerdict::NotAPod,
    };
    let ingress = match plan.endpoint_by_ip(dst) {
        Some(e) => SideVerdict::judge(e.ingress.as_ref(), src, protocol, port),
        None => SideVerdict::NotAPod,
    };
    Verdict {
        src,
        dst,
        protocol,
        port,
        egress,
        ingress,
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
    let egress = SideVerdict::judge(from.egress.as_ref(), dst, protocol, port);
    let ingress = SideVerdict::judge(to.ingress.as_ref(), src, protocol, port);
    Some(Verdict {
        src,
        dst,
        protocol,
        port,
        egress,
        ingress,
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

fn side_words(
    out: &mut String,
    index: &ClusterIndex,
    direction: Direction,
    who: &str,
    side: &SideVerdict,
    isolation: Option<&Isolation>,
) {
    let _ = match side {
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
        src.and_then(|e| e.egress.as_ref()),
    );
    audit_words(&mut out, src, &verdict.egress);
    side_words(
        &mut out,
        index,
        Direction::Ingress,
        to,
        &verdict.ingress,
        dst.and_then(|e| e.ingress.as_ref()),
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
