//! ClusterNetworkPolicy (`v1beta1`, `v1alpha2`), AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy (`v1alpha1`) to the one cluster-policy model, validated as the
//! CRDs' schemas and CEL rules do (experimental channel, the one with every field): an invalid
//! policy is an error naming the field, and is skipped like an invalid NetworkPolicy.
//!
//! What is valid but not enforced as written is a warning: peers or protocols with no field
//! nftpol knows (a newer API), which fail closed. `domainNames` peers are enforced with the
//! addresses learned from DNS answers (`crate::engine::dns`).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Ctx, InvalidObject, check_labels, labels, selector};
use crate::policy::cnp_api as api;
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind, ClusterPort,
    ClusterRule, Node, Protocol, Selector, Subject, Tier,
};

/// The highest priority value the CRDs accept.
pub const MAX_PRIORITY: i64 = 1000;
/// Rules per direction, peers per rule, protocols per rule (ClusterNetworkPolicy).
pub const MAX_ITEMS: usize = 25;
/// The same limits in v1alpha1.
pub const MAX_ITEMS_V1ALPHA1: usize = 100;
const MAX_RULE_NAME: usize = 100;

/// The versions nftpol reads, newest first.
pub const CNP_VERSIONS: [&str; 2] = ["v1beta1", "v1alpha2"];
pub const ANP_VERSION: &str = "v1alpha1";

/// Whether a manifest's apiVersion and kind are a cluster policy kind nftpol reads.
pub fn is_cluster_policy(api_version: &str, kind: &str) -> bool {
    let Some((group, version)) = api_version.split_once('/') else {
        return false;
    };
    group == api::GROUP
        && match kind {
            "ClusterNetworkPolicy" => CNP_VERSIONS.contains(&version),
            "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => version == ANP_VERSION,
            _ => false,
        }
}

/// [`cluster_policy_with_warnings`] without the warnings.
pub fn cluster_policy(value: &Value) -> Result<ClusterPolicy, InvalidObject> {
    cluster_policy_with_warnings(value).map(|(p, _)| p)
}

fn kind_of(kind: &str) -> Option<(ClusterPolicyKind, &'static str)> {
    Some(match kind {
        "ClusterNetworkPolicy" => (
            ClusterPolicyKind::ClusterNetworkPolicy,
            "ClusterNetworkPolicy",
        ),
        "AdminNetworkPolicy" => (ClusterPolicyKind::AdminNetworkPolicy, "AdminNetworkPolicy"),
        "BaselineAdminNetworkPolicy" => (
            ClusterPolicyKind::BaselineAdminNetworkPolicy,
            "BaselineAdminNetworkPolicy",
        ),
        _ => return None,
    })
}

fn object_name(value: &Value) -> String {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("<unnamed>")
        .to_string()
}

fn decode<T: DeserializeOwned>(ctx: &Ctx, value: &Value) -> Result<T, InvalidObject> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ctx.err(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })
}

/// A cluster policy of any kind and version nftpol reads, dispatched on apiVersion and kind,
/// with what it holds that is valid but not enforced as written.
pub fn cluster_policy_with_warnings(
    value: &Value,
) -> Result<(ClusterPolicy, Vec<InvalidObject>), InvalidObject> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind_str = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = object_name(value);
    let Some((kind, kind_name)) = kind_of(kind_str) else {
        return Err(InvalidObject {
            kind: "ClusterNetworkPolicy",
            object: name,
            field: "kind".into(),
            message: format!("{kind_str:?} is not a cluster policy kind nftpol reads"),
        });
    };
    let ctx = Ctx::new(kind_name, &name);
    if !is_cluster_policy(api_version, kind_str) {
        let expected = match kind {
            ClusterPolicyKind::ClusterNetworkPolicy => CNP_VERSIONS
                .iter()
                .map(|v| format!("{}/{v}", api::GROUP))
                .collect::<Vec<_>>()
                .join(" or "),
            _ => format!("{}/{ANP_VERSION}", api::GROUP),
        };
        return Err(ctx.err(
            "apiVersion",
            format!("{api_version:?} is not served: expected {expected}"),
        ));
    }
    if name == "<unnamed>" {
        return Err(ctx.err("metadata.name", "is required"));
    }
    let policy = match kind {
        ClusterPolicyKind::ClusterNetworkPolicy => {
            let cnp: api::ClusterNetworkPolicy = decode(&ctx, value)?;
            cnp_policy(&ctx, &name, &cnp.spec)?
        }
        ClusterPolicyKind::AdminNetworkPolicy => {
            let anp: api::AdminNetworkPolicy = decode(&ctx, value)?;
            let s = &anp.spec;
            anp_policy(
                &ctx,
                ClusterPolicyKey::new(kind, &name),
                Tier::Admin,
                Some(priority(&ctx, s.priority)?),
                &s.subject,
                s.ingress.as_deref(),
                s.egress.as_deref(),
            )?
        }
        ClusterPolicyKind::BaselineAdminNetworkPolicy => {
            // CEL: the singleton is named `default`.
            if name != "default" {
                return Err(ctx.err(
                    "metadata.name",
                    "only one baseline admin network policy with metadata.name=\"default\" can be created",
                ));
            }
            let banp: api::BaselineAdminNetworkPolicy = decode(&ctx, value)?;
            let s = &banp.spec;
            anp_policy(
                &ctx,
                ClusterPolicyKey::new(kind, &name),
                Tier::Baseline,
                None,
                &s.subject,
                s.ingress.as_deref(),
                s.egress.as_deref(),
            )?
        }
    };
    Ok((policy, ctx.warnings.into_inner()))
}

fn priority(ctx: &Ctx, p: i64) -> Result<u32, InvalidObject> {
    if (0..=MAX_PRIORITY).contains(&p) {
        Ok(p as u32)
    } else {
        Err(ctx.err(
            "spec.priority",
            format!("{p} must be between 0 and {MAX_PRIORITY}"),
        ))
    }
}

fn subject(ctx: &Ctx, s: &api::Subject) -> Result<Subject, InvalidObject> {
    let f = "spec.subject";
    let set = s.namespaces.is_some() as usize + s.pods.is_some() as usize + s.other.len();
    if set != 1 {
        return Err(ctx.err(f, "must set exactly one of namespaces or pods"));
    }
    if let Some(ns) = &s.namespaces {
        return Ok(Subject::Namespaces(selector(
            ctx,
            &format!("{f}.namespaces"),
            Some(ns),
        )?));
    }
    if let Some(p) = &s.pods {
        return Ok(Subject::Pods {
            namespaces: selector(
                ctx,
                &format!("{f}.pods.namespaceSelector"),
                Some(&p.namespace_selector),
            )?,
            pods: selector(ctx, &format!("{f}.pods.podSelector"), Some(&p.pod_selector))?,
        });
    }
    let unknown = s.other.keys().cloned().collect::<Vec<_>>().join(", ");
    Err(ctx.err(
        f,
        format!("{unknown} is not a subject nftpol knows (a newer API?)"),
    ))
}

fn count(ctx: &Ctx, field: &str, n: usize, min: usize, max: usize) -> Result<(), InvalidObject> {
    if n < min {
        Err(ctx.err(field, format!("must have at least {min} item(s)")))
    } else if n > max {
        Err(ctx.err(field, format!("must have at most {max} items, has {n}")))
    } else {
        Ok(())
    }
}

fn action(ctx: &Ctx, field: &str, a: &str, allowed: &[&str]) -> Result<Action, InvalidObject> {
    let parsed = match a {
        "Accept" | "Allow" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        _ => Action::Deny,
    };
    if allowed.contains(&a) {
        Ok(parsed)
    } else {
        Err(ctx.err(
            field,
            format!(
                "unsupported value {a:?}: must be one of {}",
                allowed.join(", ")
            ),
        ))
    }
}

fn rule_name(
    ctx: &Ctx,
    field: &str,
    name: &Option<String>,
) -> Result<Option<String>, InvalidObject> {
    match name {
        Some(n) if n.len() > MAX_RULE_NAME => Err(ctx.err(
            field,
            format!("must be no more than {MAX_RULE_NAME} characters"),
        )),
        Some(n) if n.is_empty() => Ok(None),
        other => Ok(other.clone()),
    }
}

fn namespaced_pod(
    ctx: &Ctx,
    field: &str,
    p: &api::NamespacedPod,
) -> Result<(Selector, Selector), InvalidObject> {
    Ok((
        selector(
            ctx,
            &format!("{field}.namespaceSelector"),
            Some(&p.namespace_selector),
        )?,
        selector(ctx, &format!("{field}.podSelector"), Some(&p.pod_selector))?,
    ))
}

fn cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, InvalidObject> {
    // CEL isCIDR() accepts host bits, as NetworkPolicy's ipBlock does.
    let net: IpNet = s
        .parse()
        .map_err(|_| ctx.err(field, format!("invalid CIDR {s:?}")))?;
    Ok(net.trunc())
}

/// `*.` only as a prefix, then lowercase DNS labels (the CRD's pattern, in short).
fn valid_domain_name(s: &str) -> bool {
    let rest = s.strip_prefix("*.").unwrap_or(s);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn peer(
    ctx: &Ctx,
    field: &str,
    p: &api::Peer,
    egress: bool,
    max: usize,
) -> Result<ClusterPeer, InvalidObject> {
    let mut fields: Vec<&str> = Vec::new();
    if p.namespaces.is_some() {
        fields.push("namespaces");
    }
    if p.pods.is_some() {
        fields.push("pods");
    }
    if p.networks.is_some() {
        fields.push("networks");
    }
    if p.nodes.is_some() {
        fields.push("nodes");
    }
    if p.domain_names.is_some() {
        fields.push("domainNames");
    }
    fields.extend(p.other.keys().map(String::as_str));
    match fields.len() {
        0 => return Err(ctx.err(field, "must set exactly one field (has none)")),
        1 => {}
        _ => {
            return Err(ctx.err(
                field,
                format!("must set exactly one field, has {}", fields.join(", ")),
            ));
        }
    }
    if let Some(ns) = &p.namespaces {
        return Ok(ClusterPeer::Namespaces(selector(
            ctx,
            &format!("{field}.namespaces"),
            Some(ns),
        )?));
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(ctx, &format!("{field}.pods"), pods)?;
        return Ok(ClusterPeer::Pods { namespaces, pods });
    }
    // What follows exists on egress peers only; on an ingress peer it is a field this API
    // version does not have, read like any unknown field.
    if egress {
        if let Some(nets) = &p.networks {
            let f = format!("{field}.networks");
            count(ctx, &f, nets.len(), 1, max)?;
            let out = nets
                .iter()
                .enumerate()
                .map(|(i, s)| cidr(ctx, &format!("{f}[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(ClusterPeer::Networks(out));
        }
        if let Some(nodes) = &p.nodes {
            return Ok(ClusterPeer::Nodes(selector(
                ctx,
                &format!("{field}.nodes"),
                Some(nodes),
            )?));
        }
        if let Some(names) = &p.domain_names {
            let f = format!("{field}.domainNames");
            count(ctx, &f, names.len(), 1, max)?;
            for (i, n) in names.iter().enumerate() {
                if !valid_domain_name(n) {
                    return Err(ctx.err(
                        format!("{f}[{i}]"),
                        format!("{n:?} is not a valid domain name ('*.' only as a prefix)"),
                    ));
                }
            }
            return Ok(ClusterPeer::DomainNames(names.clone()));
        }
    }
    Ok(ClusterPeer::Unknown(
        fields.iter().map(|s| s.to_string()).collect(),
    ))
}

fn port_number(ctx: &Ctx, field: &str, n: i64) -> Result<u16, InvalidObject> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.err(field, format!("{n} is out of range 1-65535")))
}

fn port_range(ctx: &Ctx, field: &str, start: i64, end: i64) -> Result<(u16, u16), InvalidObject> {
    let s = port_number(ctx, &format!("{field}.start"), start)?;
    let e = port_number(ctx, &format!("{field}.end"), end)?;
    if s >= e {
        return Err(ctx.err(
            field,
            format!("start port {s} must be less than end port {e}"),
        ));
    }
    Ok((s, e))
}

/// A protocol entry of a ClusterNetworkPolicy; `None` when it has no field nftpol knows.
fn cnp_protocol(
    ctx: &Ctx,
    field: &str,
    p: &api::CnpProtocol,
) -> Result<Option<ClusterPort>, InvalidObject> {
    let mut fields: Vec<&str> = Vec::new();
    for (name, set) in [
        ("tcp", p.tcp.is_some()),
        ("udp", p.udp.is_some()),
        ("sctp", p.sctp.is_some()),
        ("destinationNamedPort", p.destination_named_port.is_some()),
    ] {
        if set {
            fields.push(name);
        }
    }
    fields.extend(p.other.keys().map(String::as_str));
    match fields.len() {
        0 => return Err(ctx.err(field, "must set exactly one field (has none)")),
        1 => {}
        _ => {
            return Err(ctx.err(
                field,
                format!("must set exactly one field, has {}", fields.join(", ")),
            ));
        }
    }
    if let Some(name) = &p.destination_named_port {
        if name.is_empty() {
            return Err(ctx.err(format!("{field}.destinationNamedPort"), "must be non-empty"));
        }
        return Ok(Some(ClusterPort::Named(name.clone())));
    }
    for (proto, name, pp) in [
        (Protocol::Tcp, "tcp", &p.tcp),
        (Protocol::Udp, "udp", &p.udp),
        (Protocol::Sctp, "sctp", &p.sctp),
    ] {
        let Some(pp) = pp else { continue };
        let f = format!("{field}.{name}");
        let Some(dp) = &pp.destination_port else {
            // minProperties=1: `tcp: {}` is invalid; every port is a range 1-65535.
            return Err(ctx.err(
                format!("{f}.destinationPort"),
                "is required (for every port, use range 1-65535)",
            ));
        };
        let f = format!("{f}.destinationPort");
        let (start, end) = match (dp.number, &dp.range) {
            (Some(n), None) => {
                let n = port_number(ctx, &format!("{f}.number"), n)?;
                (n, n)
            }
            (None, Some(r)) => port_range(ctx, &format!("{f}.range"), r.start, r.end)?,
            _ => return Err(ctx.err(&f, "must set exactly one of number or range")),
        };
        return Ok(Some(ClusterPort::Ports {
            protocol: proto,
            start,
            end,
        }));
    }
    Ok(None)
}

fn anp_port(
    ctx: &Ctx,
    field: &str,
    p: &api::AnpPort,
) -> Result<Option<ClusterPort>, InvalidObject> {
    let set = p.port_number.is_some() as usize
        + p.named_port.is_some() as usize
        + p.port_range.is_some() as usize
        + p.other.len();
    if set != 1 {
        return Err(ctx.err(field, "must set exactly one field"));
    }
    let proto = |f: &str, p: &Option<String>| -> Result<Protocol, InvalidObject> {
        match p.as_deref() {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(o) => Err(ctx.err(
                f,
                format!("unsupported protocol {o:?}: must be TCP, UDP or SCTP"),
            )),
        }
    };
    if let Some(n) = &p.port_number {
        let f = format!("{field}.portNumber");
        let protocol = proto(&format!("{f}.protocol"), &n.protocol)?;
        let port = port_number(ctx, &format!("{f}.port"), n.port)?;
        return Ok(Some(ClusterPort::Ports {
            protocol,
            start: port,
            end: port,
        }));
    }
    if let Some(name) = &p.named_port {
        if name.is_empty() {
            return Err(ctx.err(format!("{field}.namedPort"), "must be non-empty"));
        }
        return Ok(Some(ClusterPort::Named(name.clone())));
    }
    if let Some(r) = &p.port_range {
        let f = format!("{field}.portRange");
        let protocol = proto(&format!("{f}.protocol"), &r.protocol)?;
        let (start, end) = port_range(ctx, &f, r.start, r.end)?;
        return Ok(Some(ClusterPort::Ports {
            protocol,
            start,
            end,
        }));
    }
    Ok(None)
}

/// Everything about a rule once its own fields are read: the checks that span peers and
/// protocols, and the fail-closed reading of what nftpol does not know.
#[allow(clippy::too_many_arguments)]
fn finish_rule(
    ctx: &Ctx,
    field: &str,
    index: usize,
    name: Option<String>,
    action: Action,
    peers: Vec<ClusterPeer>,
    protocols: Option<Vec<Option<ClusterPort>>>,
    protocols_field: &str,
) -> Result<ClusterRule, InvalidObject> {
    let has_domain = peers
        .iter()
        .any(|p| matches!(p, ClusterPeer::DomainNames(_)));
    if has_domain && action != Action::Accept {
        return Err(ctx.err(
            field,
            format!("domainNames peers are only allowed in Accept rules, not {action}"),
        ));
    }
    let named = protocols
        .iter()
        .flatten()
        .any(|p| matches!(p, Some(ClusterPort::Named(_))));
    if named
        && peers.iter().any(|p| {
            matches!(
                p,
                ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
            )
        })
    {
        return Err(ctx.err(
            protocols_field,
            "destinationNamedPort cannot be used with networks, nodes or domainNames peers",
        ));
    }
    let unknown: Vec<&String> = peers
        .iter()
        .filter_map(|p| match p {
            ClusterPeer::Unknown(f) => Some(f),
            _ => None,
        })
        .flatten()
        .collect();
    let label = name.clone().unwrap_or_else(|| format!("#{index}"));
    if !unknown.is_empty() {
        let how = if action == Action::Accept {
            "matches nothing"
        } else {
            "matches every peer"
        };
        ctx.warn(
            field,
            format!(
                "rule {label}: peer field(s) {} unknown to nftpol (a newer API?): the peer {how} (fail closed)",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let protocols = protocols.map(|list| {
        if list.iter().any(Option::is_none) {
            // An entry nftpol does not know: an Accept rule matches less (it is dropped), a
            // Deny or Pass rule more (every protocol and port), so that nothing opens.
            let how = if action == Action::Accept {
                "the entry matches nothing"
            } else {
                "the rule matches every protocol and port"
            };
            ctx.warn(
                protocols_field,
                format!("rule {label}: a protocol with no field nftpol knows (a newer API?): {how} (fail closed)"),
            );
            if action == Action::Accept {
                Some(list.into_iter().flatten().collect::<Vec<_>>())
            } else {
                None
            }
        } else {
            Some(list.into_iter().flatten().collect())
        }
    });
    let protocols = protocols.flatten();
    let rule = ClusterRule {
        name,
        index,
        action,
        peers,
        protocols,
    };
    Ok(rule)
}

fn cnp_policy(ctx: &Ctx, name: &str, s: &api::CnpSpec) -> Result<ClusterPolicy, InvalidObject> {
    let tier = match s.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => {
            return Err(ctx.err(
                "spec.tier",
                format!("unsupported value {other:?}: must be Admin or Baseline"),
            ));
        }
    };
    let priority = priority(ctx, s.priority)?;
    let subject = subject(ctx, &s.subject)?;
    let actions = ["Accept", "Deny", "Pass"];
    let mut ingress = Vec::new();
    if let Some(rules) = &s.ingress {
        count(ctx, "spec.ingress", rules.len(), 0, MAX_ITEMS)?;
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.ingress[{i}]");
            let rname = rule_name(ctx, &format!("{f}.name"), &r.name)?;
            let action = action(ctx, &format!("{f}.action"), &r.action, &actions)?;
            count(ctx, &format!("{f}.from"), r.from.len(), 1, MAX_ITEMS)?;
            let peers = r
                .from
                .iter()
                .enumerate()
                .map(|(j, p)| peer(ctx, &format!("{f}.from[{j}]"), p, false, MAX_ITEMS))
                .collect::<Result<Vec<_>, _>>()?;
            let pf = format!("{f}.protocols");
            let protocols =
                protocol_list(ctx, &pf, r.protocols.as_deref(), MAX_ITEMS, cnp_protocol)?;
            ingress.push(finish_rule(
                ctx, &f, i, rname, action, peers, protocols, &pf,
            )?);
        }
    }
    let mut egress = Vec::new();
    if let Some(rules) = &s.egress {
        count(ctx, "spec.egress", rules.len(), 0, MAX_ITEMS)?;
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.egress[{i}]");
            let rname = rule_name(ctx, &format!("{f}.name"), &r.name)?;
            let action = action(ctx, &format!("{f}.action"), &r.action, &actions)?;
            count(ctx, &format!("{f}.to"), r.to.len(), 1, MAX_ITEMS)?;
            let peers =
                r.to.iter()
                    .enumerate()
                    .map(|(j, p)| peer(ctx, &format!("{f}.to[{j}]"), p, true, MAX_ITEMS))
                    .collect::<Result<Vec<_>, _>>()?;
            let pf = format!("{f}.protocols");
            let protocols =
                protocol_list(ctx, &pf, r.protocols.as_deref(), MAX_ITEMS, cnp_protocol)?;
            egress.push(finish_rule(
                ctx, &f, i, rname, action, peers, protocols, &pf,
            )?);
        }
    }
    Ok(ClusterPolicy {
        key: ClusterPolicyKey::new(ClusterPolicyKind::ClusterNetworkPolicy, name),
        tier,
        priority: Some(priority),
        subject,
        ingress,
        egress,
    })
}

type Protocols = Option<Vec<Option<ClusterPort>>>;

/// An optional list of 1..=`max` protocols (or v1alpha1 ports), each converted by `one` with
/// its index in the field path.
fn protocol_list<T>(
    ctx: &Ctx,
    field: &str,
    list: Option<&[T]>,
    max: usize,
    one: impl Fn(&Ctx, &str, &T) -> Result<Option<ClusterPort>, InvalidObject>,
) -> Result<Protocols, InvalidObject> {
    let Some(list) = list else { return Ok(None) };
    count(ctx, field, list.len(), 1, max)?;
    list.iter()
        .enumerate()
        .map(|(i, p)| one(ctx, &format!("{field}[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn anp_policy(
    ctx: &Ctx,
    key: ClusterPolicyKey,
    tier: Tier,
    priority: Option<u32>,
    subject_spec: &api::Subject,
    ingress_spec: Option<&[api::AnpIngressRule]>,
    egress_spec: Option<&[api::AnpEgressRule]>,
) -> Result<ClusterPolicy, InvalidObject> {
    let subject = subject(ctx, subject_spec)?;
    let actions: &[&str] = if tier == Tier::Admin {
        &["Allow", "Deny", "Pass"]
    } else {
        &["Allow", "Deny"]
    };
    let max = MAX_ITEMS_V1ALPHA1;
    let mut ingress = Vec::new();
    if let Some(rules) = ingress_spec {
        count(ctx, "spec.ingress", rules.len(), 0, max)?;
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.ingress[{i}]");
            let rname = rule_name(ctx, &format!("{f}.name"), &r.name)?;
            let action = action(ctx, &format!("{f}.action"), &r.action, actions)?;
            count(ctx, &format!("{f}.from"), r.from.len(), 1, max)?;
            let peers = r
                .from
                .iter()
                .enumerate()
                .map(|(j, p)| peer(ctx, &format!("{f}.from[{j}]"), p, false, max))
                .collect::<Result<Vec<_>, _>>()?;
            let pf = format!("{f}.ports");
            let protocols =
                protocol_list(ctx, &pf, r.ports.as_deref(), MAX_ITEMS_V1ALPHA1, anp_port)?;
            ingress.push(finish_rule(
                ctx, &f, i, rname, action, peers, protocols, &pf,
            )?);
        }
    }
    let mut egress = Vec::new();
    if let Some(rules) = egress_spec {
        count(ctx, "spec.egress", rules.len(), 0, max)?;
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.egress[{i}]");
            let rname = rule_name(ctx, &format!("{f}.name"), &r.name)?;
            let action = action(ctx, &format!("{f}.action"), &r.action, actions)?;
            count(ctx, &format!("{f}.to"), r.to.len(), 1, max)?;
            let peers =
                r.to.iter()
                    .enumerate()
                    .map(|(j, p)| peer(ctx, &format!("{f}.to[{j}]"), p, true, max))
                    .collect::<Result<Vec<_>, _>>()?;
            let pf = format!("{f}.ports");
            let protocols =
                protocol_list(ctx, &pf, r.ports.as_deref(), MAX_ITEMS_V1ALPHA1, anp_port)?;
            egress.push(finish_rule(
                ctx, &f, i, rname, action, peers, protocols, &pf,
            )?);
        }
    }
    Ok(ClusterPolicy {
        key,
        tier,
        priority,
        subject,
        ingress,
        egress,
    })
}

/// A Node for `nodes` peers: its labels and the addresses of status.addresses that are IPs
/// (host names are not).
pub fn node(node: &core::Node) -> Node {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        if let Ok(ip) = a.address.parse::<IpAddr>()
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    }
    Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: labels(&node.metadata),
        addresses,
    }
}

/// A Node read from a manifest: like [`node`], with its labels checked like a pod's.
pub fn node_checked(n: &core::Node) -> Result<Node, InvalidObject> {
    let name = super::name_of(&n.metadata, "Node")?;
    let ctx = Ctx::new("Node", &name);
    check_labels(&ctx, "metadata.labels", &labels(&n.metadata))?;
    Ok(node(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnp(spec: Value) -> Value {
        json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "p"},
            "spec": spec,
        })
    }

    fn base(ingress: Value, egress: Value) -> Value {
        cnp(json!({
            "tier": "Admin", "priority": 10,
            "subject": {"namespaces": {}},
            "ingress": ingress, "egress": egress,
        }))
    }

    fn field_of(v: &Value) -> String {
        cluster_policy(v).expect_err("invalid").field
    }

    #[test]
    fn reads_every_served_version_and_kind_into_one_model() {
        let mut v = base(
            json!([{"name": "r", "action": "Deny", "from": [{"namespaces": {}}]}]),
            json!([]),
        );
        for version in ["v1beta1", "v1alpha2"] {
            v["apiVersion"] = json!(format!("policy.networking.k8s.io/{version}"));
            let p = cluster_policy(&v).expect("valid");
            assert_eq!(p.tier, Tier::Admin);
            assert_eq!(p.priority, Some(10));
            assert_eq!(p.ingress[0].action, Action::Deny);
            assert_eq!(p.ingress[0].label(), "r");
        }
        v["apiVersion"] = json!("policy.networking.k8s.io/v1alpha1");
        assert_eq!(field_of(&v), "apiVersion");
        let anp = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": "a"},
            "spec": {"priority": 3, "subject": {"namespaces": {}},
                     "egress": [{"name": "e", "action": "Allow", "to": [{"networks": ["10.0.0.1/8"]}],
                                 "ports": [{"portRange": {"protocol": "UDP", "start": 53, "end": 54}}]}]}
        });
        let p = cluster_policy(&anp).expect("valid ANP");
        assert_eq!(p.key.kind, ClusterPolicyKind::AdminNetworkPolicy);
        assert_eq!(p.egress[0].action, Action::Accept);
        assert_eq!(
            p.egress[0].peers,
            vec![ClusterPeer::Networks(vec!["10.0.0.0/8".parse().unwrap()])]
        );
        assert_eq!(
            p.egress[0].protocols,
            Some(vec![ClusterPort::Ports {
                protocol: Protocol::Udp,
                start: 53,
                end: 54
            }])
        );
        let banp = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}},
                     "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}
        });
        assert_eq!(field_of(&banp), "spec.ingress[0].action");
        let mut banp = banp;
        banp["spec"]["ingress"][0]["action"] = json!("Allow");
        let p = cluster_policy(&banp).expect("valid BANP");
        assert_eq!((p.tier, p.priority), (Tier::Baseline, None));
        banp["metadata"]["name"] = json!("other");
        assert_eq!(field_of(&banp), "metadata.name");
    }

    #[test]
    fn a_pods_subject_or_peer_without_namespace_selector_means_every_namespace() {
        let with = |pods: Value| {
            cnp(json!({
                "tier": "Admin", "priority": 10,
                "subject": {"pods": pods.clone()},
                "ingress": [{"action": "Deny", "from": [{"pods": pods.clone()}]}],
                "egress": [{"action": "Deny", "to": [{"pods": pods}]}],
            }))
        };
        let omitted = cluster_policy(&with(json!({"podSelector": {"matchLabels": {"a": "b"}}})))
            .expect("namespaceSelector is optional");
        let explicit = cluster_policy(&with(json!({
            "namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}
        })))
        .expect("valid");
        assert_eq!(omitted.subject, explicit.subject);
        assert_eq!(omitted.ingress[0].peers, explicit.ingress[0].peers);
        assert_eq!(omitted.egress[0].peers, explicit.egress[0].peers);
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let deny = |peers: Value| json!([{"action": "Deny", "to": peers}]);
        let cases: Vec<(Value, &str)> = vec![
            (
                cnp(json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}})),
                "spec.priority",
            ),
            (
                cnp(json!({"tier": "Middle", "priority": 1, "subject": {"namespaces": {}}})),
                "spec.tier",
            ),
            (
                cnp(json!({"tier": "Admin", "priority": 1, "subject": {}})),
                "spec.subject",
            ),
            (
                cnp(
                    json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}}),
                ),
                "spec.subject",
            ),
            (base(json!([]), deny(json!([]))), "spec.egress[0].to"),
            (base(json!([]), deny(json!([{}]))), "spec.egress[0].to[0]"),
            (
                base(
                    json!([]),
                    deny(json!([{"namespaces": {}, "networks": ["10.0.0.0/8"]}])),
                ),
                "spec.egress[0].to[0]",
            ),
            (
                base(json!([]), deny(json!([{"networks": ["10.0.0.0/33"]}]))),
                "spec.egress[0].to[0].networks[0]",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"domainNames": ["a.example"]}]}]),
                ),
                "spec.egress[0]",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Drop", "to": [{"namespaces": {}}]}]),
                ),
                "spec.egress[0].action",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]}]),
                ),
                "spec.egress[0].protocols[0].tcp.destinationPort.range",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}]),
                ),
                "spec.egress[0].protocols[0].tcp.destinationPort.number",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {}}],
                    "protocols": [{"tcp": {}}]}]),
                ),
                "spec.egress[0].protocols[0].tcp.destinationPort",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 80}}, "udp": {"destinationPort": {"number": 80}}}]}]),
                ),
                "spec.egress[0].protocols[0]",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                    "protocols": [{"destinationNamedPort": "web"}]}]),
                ),
                "spec.egress[0].protocols",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {}}], "protocols": []}]),
                ),
                "spec.egress[0].protocols",
            ),
            (
                base(
                    json!([]),
                    json!([{"action": "Deny", "to": [{"namespaces": {"matchLabels": {"bad key!": "x"}}}]}]),
                ),
                "spec.egress[0].to[0].namespaces.matchLabels",
            ),
            (
                cnp(json!({"tier": "Admin", "priority": "high", "subject": {"namespaces": {}}})),
                "spec.priority",
            ),
        ];
        for (v, field) in cases {
            let err = cluster_policy(&v).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let many: Vec<Value> = (0..26)
            .map(|_| json!({"action": "Deny", "to": [{"namespaces": {}}]}))
            .collect();
        assert_eq!(field_of(&base(json!([]), json!(many))), "spec.egress");
        let peers: Vec<Value> = (0..26).map(|_| json!({"namespaces": {}})).collect();
        assert_eq!(
            field_of(&base(json!([]), deny(json!(peers)))),
            "spec.egress[0].to"
        );
    }

    #[test]
    fn what_nftpol_does_not_know_fails_closed_with_a_warning() {
        let v = base(
            json!([{"action": "Accept", "from": [{"networks": ["10.0.0.0/8"]}]},
                   {"action": "Deny", "from": [{"futurePeer": {}}]}]),
            json!([{"action": "Accept", "to": [{"domainNames": ["*.example.com"]}]},
                   {"action": "Pass", "to": [{"namespaces": {}}], "protocols": [{"icmp": {}}]},
                   {"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"icmp": {}}]}]),
        );
        let (p, warnings) = cluster_policy_with_warnings(&v).expect("valid");
        // `networks` does not exist on ingress peers: read as an unknown field.
        assert_eq!(
            p.ingress[0].peers,
            vec![ClusterPeer::Unknown(vec!["networks".into()])]
        );
        assert_eq!(
            p.ingress[1].peers,
            vec![ClusterPeer::Unknown(vec!["futurePeer".into()])]
        );
        assert!(p.egress[0].domain_names_only());
        assert_eq!(p.egress[1].protocols, None, "Pass: every protocol");
        assert_eq!(p.egress[2].protocols, Some(vec![]), "Accept: nothing");
        assert_eq!(warnings.len(), 4, "{warnings:?}");
    }

    #[test]
    fn nodes_keep_their_ip_addresses() {
        let n: core::Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"role": "worker"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "2001:db8::1"},
                {"type": "InternalIP", "address": "192.168.1.10"}
            ]}
        }))
        .unwrap();
        let node = node(&n);
        assert_eq!(node.name, "n1");
        assert_eq!(
            node.addresses,
            vec![
                "192.168.1.10".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(node.labels.get("role").map(String::as_str), Some("worker"));
    }
}
