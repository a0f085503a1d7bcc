//! Conversion from k8s-openapi objects to the validated model, applying the NetworkPolicy v1
//! defaulting rules and rejecting what the API server would reject (invalid CIDRs, an except
//! outside its CIDR, unknown protocols or selector operators, ports out of range, label keys
//! and values it would not store, in selectors and on pods and namespaces).
//!
//! What the API server still stores although it would reject it in a new object is kept and
//! returned as a warning instead ([`policy_with_warnings`]): the only such field is an invalid
//! value in a selector's `In`/`NotIn` list, which matches no label.
//!
//! This is the only module that knows the Kubernetes wire types; errors name the object and the
//! field (`spec.ingress[0].from[1].ipBlock.except[0]`) so that a user can find the mistake.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::policy::index::NAMESPACE_NAME_LABEL;
use crate::policy::model::{
    ContainerPort, Labels, Namespace, NamespaceScope, ObjectKey, Peer, Pod, Policy, PortMatch,
    PortSpec, Protocol, Requirement, Rule, Selector,
};

mod cluster;
pub use cluster::{
    ANP_VERSION, CNP_VERSIONS, MAX_ITEMS, MAX_PRIORITY, cluster_policy,
    cluster_policy_with_warnings, is_cluster_policy, node, node_checked,
};

/// Annotation on a NetworkPolicy: also log the new connections its rules allow.
pub const LOG_ANNOTATION: &str = "nftpol.io/log";

/// Annotation on a Namespace: `audit` lets through (and logs and counts) what the policies of
/// its pods would drop; anything else, or none, enforces them.
pub const ENFORCEMENT_ANNOTATION: &str = "nftpol.io/enforcement";

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// An object the API server would reject, or that nftpol cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {message}")]
pub struct InvalidObject {
    pub kind: &'static str,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub object: String,
    pub field: String,
    pub message: String,
}

struct Ctx<'a> {
    kind: &'static str,
    object: &'a str,
    /// What was accepted but is reported.
    warnings: RefCell<Vec<InvalidObject>>,
}

impl<'a> Ctx<'a> {
    fn new(kind: &'static str, object: &'a str) -> Self {
        Self {
            kind,
            object,
            warnings: RefCell::default(),
        }
    }

    fn warn(&self, field: impl Into<String>, message: impl Into<String>) {
        let warning = self.err(field, message);
        self.warnings.borrow_mut().push(warning);
    }

    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> InvalidObject {
        InvalidObject {
            kind: self.kind,
            object: self.object.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn name_of(meta: &ObjectMeta, kind: &'static str) -> Result<String, InvalidObject> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(InvalidObject {
            kind,
            object: "<unnamed>".into(),
            field: "metadata.name".into(),
            message: "is required".into(),
        }),
    }
}

/// Namespace of a namespaced object; absent means `default`, as for `kubectl apply`.
pub fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// The longest name part of a label key, and the longest label value.
const LABEL_NAME_MAX_LEN: usize = 63;
const LABEL_VALUE_MAX_LEN: usize = 63;
/// The longest DNS subdomain, such as a label key's prefix.
const DNS_SUBDOMAIN_MAX_LEN: usize = 253;

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a label key, and a non-empty
/// label value.
fn qualified_name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(inner)
}

/// A lowercase RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn dns_subdomain(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= DNS_SUBDOMAIN_MAX_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
                && b.iter().all(|c| alnum(c) || *c == b'-')
        })
}

/// Why the API server would refuse `key` as a label key, as apimachinery's
/// `validation.IsQualifiedName` (`content.IsLabelKey`) decides: an optional DNS subdomain
/// prefix and '/', then a name of at most 63 characters.
fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        None => (None, key),
        Some((prefix, name)) if !name.contains('/') => (Some(prefix), name),
        Some(_) => {
            return Some(
                "must be a name with an optional DNS subdomain prefix and one '/' \
                 (e.g. 'example.com/MyName')"
                    .into(),
            );
        }
    };
    match prefix {
        Some("") => return Some("prefix part must be non-empty".into()),
        Some(p) if !dns_subdomain(p) => {
            return Some(format!(
                "prefix part must be a lowercase RFC 1123 subdomain of at most \
                 {DNS_SUBDOMAIN_MAX_LEN} characters: lower case alphanumeric characters, '-' \
                 or '.', starting and ending with an alphanumeric character (e.g. 'example.com')"
            ));
        }
        _ => {}
    }
    if name.is_empty() {
        Some("name part must be non-empty".into())
    } else if name.len() > LABEL_NAME_MAX_LEN {
        Some(format!(
            "name part must be no more than {LABEL_NAME_MAX_LEN} characters"
        ))
    } else if !qualified_name_chars(name) {
        Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character"
                .into(),
        )
    } else {
        None
    }
}

/// Why the API server would refuse `value` as a label value (apimachinery's
/// `validation.IsValidLabelValue`, `content.IsLabelValue`): empty, or at most 63 characters of
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn label_value_error(value: &str) -> Option<String> {
    if value.len() > LABEL_VALUE_MAX_LEN {
        Some(format!(
            "must be no more than {LABEL_VALUE_MAX_LEN} characters"
        ))
    } else if !value.is_empty() && !qualified_name_chars(value) {
        Some(
            "a valid label must be an empty string or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
                .into(),
        )
    } else {
        None
    }
}

/// Checks a label map (an object's labels, or a selector's matchLabels) as the API server's
/// `ValidateLabels` does; the error is reported at `field` and names the key.
fn check_labels(ctx: &Ctx, field: &str, labels: &Labels) -> Result<(), InvalidObject> {
    for (k, v) in labels {
        if let Some(why) = label_key_error(k) {
            return Err(ctx.err(field, format!("invalid key {k:?}: {why}")));
        }
        if let Some(why) = label_value_error(v) {
            return Err(ctx.err(field, format!("invalid value {v:?} for key {k:?}: {why}")));
        }
    }
    Ok(())
}

pub fn namespace(ns: &core::Namespace) -> Result<Namespace, InvalidObject> {
    let name = name_of(&ns.metadata, "Namespace")?;
    let mut labels = labels(&ns.metadata);
    let ctx = Ctx::new("Namespace", &name);
    check_labels(&ctx, "metadata.labels", &labels)?;
    // The API server sets this label on every namespace since 1.21; older servers and
    // hand-written manifests may lack it, and policies select on it.
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    let audit = annotation(&ns.metadata, ENFORCEMENT_ANNOTATION) == Some("audit");
    Ok(Namespace {
        name,
        labels,
        audit,
    })
}

/// A namespace known only because objects live in it.
pub fn implied_namespace(name: &str) -> Namespace {
    Namespace {
        name: name.to_string(),
        labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        audit: false,
    }
}

fn protocol(ctx: &Ctx, field: &str, p: Option<&str>) -> Result<Protocol, InvalidObject> {
    match p {
        None => Ok(Protocol::Tcp),
        Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(ctx.err(
            field,
            format!("unsupported protocol {other:?}: must be TCP, UDP or SCTP"),
        )),
    }
}

fn port_number(ctx: &Ctx, field: &str, n: i32) -> Result<u16, InvalidObject> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.err(field, format!("port {n} is out of range 1-65535")))
}

/// IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', at least one letter,
/// no leading, trailing or double '-'.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub fn pod(pod: &core::Pod) -> Result<Pod, InvalidObject> {
    let name = name_of(&pod.metadata, "Pod")?;
    let key = ObjectKey::new(namespace_of(&pod.metadata), name);
    let object = key.to_string();
    let ctx = Ctx::new("Pod", &object);
    // The API server never stores such labels; in a manifest they are a typo that would make
    // the pod silently escape (or join) selections, so the pod is refused like any bad field.
    let labels = labels(&pod.metadata);
    check_labels(&ctx, "metadata.labels", &labels)?;
    let spec = pod.spec.as_ref();
    let mut ports = Vec::new();
    for (ci, c) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let port = port_number(&ctx, &format!("{field}.containerPort"), p.container_port)?;
            let protocol = protocol(&ctx, &format!("{field}.protocol"), p.protocol.as_deref())?;
            ports.push(ContainerPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol,
            });
        }
    }
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|p| p.ip.as_str()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .or_else(|| status.and_then(|s| s.pod_ip.as_deref()).map(|ip| vec![ip]))
        .unwrap_or_default();
    for (i, s) in listed.into_iter().enumerate() {
        let ip: IpAddr = s.parse().map_err(|_| {
            ctx.err(
                format!("status.podIPs[{i}].ip"),
                format!("invalid IP {s:?}"),
            )
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(Pod {
        key,
        labels: Arc::new(labels),
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        ips,
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        phase: status.and_then(|s| s.phase.clone()),
    })
}

fn selector(
    ctx: &Ctx,
    field: &str,
    sel: Option<&LabelSelector>,
) -> Result<Selector, InvalidObject> {
    let Some(sel) = sel else {
        return Ok(Selector::everything());
    };
    let mut requirements = Vec::new();
    if let Some(match_labels) = &sel.match_labels {
        check_labels(ctx, &format!("{field}.matchLabels"), match_labels)?;
    }
    for (k, v) in sel.match_labels.iter().flatten() {
        requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let need_values = |op: &str| {
            if values.is_empty() {
                Err(ctx.err(
                    format!("{f}.values"),
                    format!("must be non-empty for operator {op}"),
                ))
            } else {
                Ok(())
            }
        };
        let no_values = |op: &str| {
            if values.is_empty() {
                Ok(())
            } else {
                Err(ctx.err(
                    format!("{f}.values"),
                    format!("must be empty for operator {op}"),
                ))
            }
        };
        let r = match e.operator.as_str() {
            "In" => need_values("In").map(|_| Requirement::In(e.key.clone(), values.clone()))?,
            "NotIn" => {
                need_values("NotIn").map(|_| Requirement::NotIn(e.key.clone(), values.clone()))?
            }
            "Exists" => no_values("Exists").map(|_| Requirement::Exists(e.key.clone()))?,
            "DoesNotExist" => {
                no_values("DoesNotExist").map(|_| Requirement::DoesNotExist(e.key.clone()))?
            }
            other => {
                return Err(ctx.err(
                    format!("{f}.operator"),
                    format!(
                        "unknown selector operator {other:?}: must be In, NotIn, Exists or DoesNotExist"
                    ),
                ));
            }
        };
        if let Some(why) = label_key_error(&e.key) {
            return Err(ctx.err(
                format!("{f}.key"),
                format!("invalid key {:?}: {why}", e.key),
            ));
        }
        // Only In and NotIn get this far with values. The API server checks them on create;
        // on update it still accepts them if the stored object already had invalid ones
        // (NetworkPolicyValidationOptions.AllowInvalidLabelValueInSelector, for objects from
        // before it checked values), so such policies exist. Skipping one would open the pods
        // it isolates; kept, the value matches no label (no pod or namespace has such a label
        // value), so `In` never matches it and `NotIn` never excludes by it.
        for (j, v) in values.iter().enumerate() {
            if let Some(why) = label_value_error(v) {
                ctx.warn(
                    format!("{f}.values[{j}]"),
                    format!(
                        "invalid value {v:?} (it matches no label; the API server keeps such \
                         values only in policies stored before it checked them): {why}"
                    ),
                );
            }
        }
        requirements.push(r);
    }
    Ok(Selector { requirements })
}

fn ip_block(ctx: &Ctx, field: &str, block: &net::IPBlock) -> Result<Peer, InvalidObject> {
    // The API server accepts host bits in the CIDR (upstream tests write "<pod IP>/4").
    let cidr: IpNet = block.cidr.parse().map_err(|_| {
        ctx.err(
            format!("{field}.cidr"),
            format!("invalid CIDR {:?}", block.cidr),
        )
    })?;
    let cidr = cidr.trunc();
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let n: IpNet = e
            .parse()
            .map_err(|_| ctx.err(&f, format!("invalid CIDR {e:?}")))?;
        let n = n.trunc();
        if !cidr.contains(&n) || n.prefix_len() <= cidr.prefix_len() {
            return Err(ctx.err(&f, format!("{e} is not strictly inside the cidr {cidr}")));
        }
        except.push(n);
    }
    Ok(Peer::IpBlock { cidr, except })
}

fn peers(
    ctx: &Ctx,
    field: &str,
    namespace: &str,
    list: Option<&Vec<net::NetworkPolicyPeer>>,
) -> Result<Option<Vec<Peer>>, InvalidObject> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let peer = match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
            (Some(block), None, None) => ip_block(ctx, &format!("{f}.ipBlock"), block)?,
            (Some(_), _, _) => {
                return Err(ctx.err(
                    &f,
                    "ipBlock may not be combined with podSelector or namespaceSelector",
                ));
            }
            (None, None, None) => {
                return Err(ctx.err(&f, "must specify podSelector, namespaceSelector or ipBlock"));
            }
            (None, ns_sel, pod_sel) => {
                let pods = selector(ctx, &format!("{f}.podSelector"), pod_sel.as_ref())?;
                let namespaces = match ns_sel {
                    Some(s) => NamespaceScope::Selected(selector(
                        ctx,
                        &format!("{f}.namespaceSelector"),
                        Some(s),
                    )?),
                    None => NamespaceScope::Own(namespace.to_string()),
                };
                Peer::Pods { namespaces, pods }
            }
        };
        out.push(peer);
    }
    Ok(Some(out))
}

fn ports(
    ctx: &Ctx,
    field: &str,
    list: Option<&Vec<net::NetworkPolicyPort>>,
) -> Result<Option<Vec<PortSpec>>, InvalidObject> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let protocol = protocol(ctx, &format!("{f}.protocol"), p.protocol.as_deref())?;
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::All,
            (None, Some(_)) => {
                return Err(ctx.err(format!("{f}.endPort"), "may only be set together with port"));
            }
            (Some(IntOrString::Int(n)), end) => {
                let lo = port_number(ctx, &format!("{f}.port"), *n)?;
                let hi = match end {
                    None => lo,
                    Some(e) => {
                        let hi = port_number(ctx, &format!("{f}.endPort"), e)?;
                        if hi < lo {
                            return Err(ctx.err(
                                format!("{f}.endPort"),
                                format!("{hi} must be greater than or equal to port {lo}"),
                            ));
                        }
                        hi
                    }
                };
                PortMatch::Range(lo, hi)
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(ctx.err(
                        format!("{f}.endPort"),
                        "may not be set when port is a named port",
                    ));
                }
                // A numeric string ("80") is a number on the wire of some tools.
                if let Ok(n) = name.parse::<i32>() {
                    let p = port_number(ctx, &format!("{f}.port"), n)?;
                    PortMatch::Range(p, p)
                } else if valid_port_name(name) {
                    PortMatch::Named(name.clone())
                } else {
                    return Err(ctx.err(
                        format!("{f}.port"),
                        format!("{name:?} is not a valid port name (IANA_SVC_NAME)"),
                    ));
                }
            }
        };
        out.push(PortSpec { protocol, port });
    }
    Ok(Some(out))
}

/// [`policy_with_warnings`] without the warnings: for callers that report nothing.
pub fn policy(np: &net::NetworkPolicy) -> Result<Policy, InvalidObject> {
    policy_with_warnings(np).map(|(p, _)| p)
}

/// The policy, and what it holds that the API server would reject in a new policy but still
/// stores (see the module doc): to be reported as warnings, the policy being enforced.
pub fn policy_with_warnings(
    np: &net::NetworkPolicy,
) -> Result<(Policy, Vec<InvalidObject>), InvalidObject> {
    let name = name_of(&np.metadata, "NetworkPolicy")?;
    let key = ObjectKey::new(namespace_of(&np.metadata), name);
    let object = key.to_string();
    let ctx = Ctx::new("NetworkPolicy", &object);
    let default_spec = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = selector(&ctx, "spec.podSelector", spec.pod_selector.as_ref())?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: peers(&ctx, &format!("{f}.from"), &key.namespace, r.from.as_ref())?,
            ports: ports(&ctx, &format!("{f}.ports"), r.ports.as_ref())?,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: peers(&ctx, &format!("{f}.to"), &key.namespace, r.to.as_ref())?,
            ports: ports(&ctx, &format!("{f}.ports"), r.ports.as_ref())?,
        });
    }
    let (isolates_ingress, isolates_egress) = match spec.policy_types.as_deref() {
        // Omitted or empty: Ingress always, Egress when the spec has egress rules. The API
        // server defaults an empty list exactly like an absent one (kubernetes
        // pkg/apis/networking/v1/defaults.go, SetDefaults_NetworkPolicy:
        // `if len(obj.Spec.PolicyTypes) == 0 { ... }`), and manifests read from Git never went
        // through it, so an explicit `policyTypes: []` must not leave the pods open.
        None | Some([]) => (true, !egress.is_empty()),
        Some(types) => {
            let mut seen = BTreeSet::new();
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" | "Egress" => {
                        seen.insert(t.as_str());
                    }
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?}: must be Ingress or Egress"),
                        ));
                    }
                }
            }
            (seen.contains("Ingress"), seen.contains("Egress"))
        }
    };
    let log_allowed = annotation(&np.metadata, LOG_ANNOTATION) == Some("true");
    let policy = Policy {
        key,
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        log_allowed,
    };
    Ok((policy, ctx.warnings.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_audit_value_puts_a_namespace_in_audit_mode() {
        let ns = |annotations: serde_json::Value| {
            let object: core::Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "shop", "annotations": annotations}
            }))
            .unwrap();
            namespace(&object).unwrap().audit
        };
        assert!(ns(serde_json::json!({"nftpol.io/enforcement": "audit"})));
        assert!(!ns(serde_json::json!({"nftpol.io/enforcement": "enforce"})));
        assert!(!ns(serde_json::json!({"nftpol.io/enforcement": "Audit"})));
        assert!(!ns(serde_json::json!({})));
    }

    fn np(json: serde_json::Value) -> net::NetworkPolicy {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn policy_types_default() {
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": [{}]}
        })))
        .unwrap();
        assert!(p.isolates_ingress && p.isolates_egress);
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}}
        })))
        .unwrap();
        assert!(p.isolates_ingress && !p.isolates_egress);
    }

    #[test]
    fn empty_policy_types_default_like_absent_ones() {
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": [], "egress": [{}]}
        })))
        .unwrap();
        assert!(p.isolates_ingress && p.isolates_egress);
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": [], "egress": []}
        })))
        .unwrap();
        assert!(p.isolates_ingress && !p.isolates_egress);
    }

    /// The field each invalid selector is reported at, for a policy with that selector as its
    /// podSelector and as both selectors of an egress peer. (Invalid In/NotIn values are
    /// warnings: see the next test.)
    #[test]
    fn invalid_label_keys_and_values_in_selectors_are_rejected() {
        let cases = [
            (
                json_sel(r#"{"matchLabels": {"app": "has space"}}"#),
                "matchLabels",
            ),
            (
                json_sel(r#"{"matchLabels": {"has space": "a"}}"#),
                "matchLabels",
            ),
            (json_sel(r#"{"matchLabels": {"app": "-a"}}"#), "matchLabels"),
            (
                json_sel(&format!(
                    r#"{{"matchLabels": {{"app": "{}"}}}}"#,
                    "a".repeat(64)
                )),
                "matchLabels",
            ),
            (
                json_sel(r#"{"matchLabels": {"Example.com/app": "a"}}"#),
                "matchLabels",
            ),
            (json_sel(r#"{"matchLabels": {"/app": "a"}}"#), "matchLabels"),
            (
                json_sel(r#"{"matchLabels": {"a/b/c": "a"}}"#),
                "matchLabels",
            ),
            (
                json_sel(r#"{"matchLabels": {"example.com/": "a"}}"#),
                "matchLabels",
            ),
            (
                json_sel(r#"{"matchExpressions": [{"key": "app!", "operator": "Exists"}]}"#),
                "matchExpressions[0].key",
            ),
            (
                json_sel(r#"{"matchExpressions": [{"key": "", "operator": "DoesNotExist"}]}"#),
                "matchExpressions[0].key",
            ),
            (
                json_sel(
                    r#"{"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}"#,
                ),
                "matchExpressions[0].values",
            ),
            (
                json_sel(r#"{"matchExpressions": [{"key": "app", "operator": "In"}]}"#),
                "matchExpressions[0].values",
            ),
            (
                json_sel(
                    r#"{"matchExpressions": [{"key": "app", "operator": "in", "values": ["a"]}]}"#,
                ),
                "matchExpressions[0].operator",
            ),
        ];
        for (sel, field) in &cases {
            let err = policy(&np(serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": sel}
            })))
            .expect_err(&format!("{sel}"));
            assert_eq!(err.field, format!("spec.podSelector.{field}"), "{sel}");
            assert_eq!((err.kind, err.object.as_str()), ("NetworkPolicy", "x/p"));
            for peer in ["podSelector", "namespaceSelector"] {
                let err = policy(&np(serde_json::json!({
                    "metadata": {"name": "p", "namespace": "x"},
                    "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {peer: sel}]}]}
                })))
                .expect_err(&format!("{peer} {sel}"));
                assert_eq!(
                    err.field,
                    format!("spec.egress[0].to[1].{peer}.{field}"),
                    "{sel}"
                );
            }
        }
    }

    /// An invalid value in an In/NotIn list, which the API server keeps in policies stored
    /// before it checked them, is a warning at its field: the policy is kept, the value as
    /// written (it matches no label).
    #[test]
    fn invalid_in_and_not_in_values_are_warnings_and_the_policy_is_kept() {
        let cases = [
            (
                r#"{"matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", "not ok"]}]}"#,
                "matchExpressions[0].values[1]",
                Requirement::In("app".into(), vec!["ok".into(), "not ok".into()]),
            ),
            (
                r#"{"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a_"]}]}"#,
                "matchExpressions[0].values[0]",
                Requirement::NotIn("app".into(), vec!["a_".into()]),
            ),
        ];
        for (sel, field, requirement) in cases {
            let sel = json_sel(sel);
            let (p, warnings) = policy_with_warnings(&np(serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": sel, "ingress": [{"from": [{"namespaceSelector": sel}]}]}
            })))
            .expect("kept");
            assert_eq!(p.pod_selector.requirements, [requirement], "{sel}");
            let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
            assert_eq!(
                fields,
                [
                    format!("spec.podSelector.{field}"),
                    format!("spec.ingress[0].from[0].namespaceSelector.{field}")
                ],
                "{sel}"
            );
            assert!(
                warnings
                    .iter()
                    .all(|w| (w.kind, w.object.as_str()) == ("NetworkPolicy", "x/p")
                        && w.message.contains("matches no label")),
                "{warnings:?}"
            );
        }
        // Valid values give no warnings.
        let (_, warnings) = policy_with_warnings(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", ""]}]}}
        })))
        .expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn valid_label_keys_and_values_in_selectors_are_accepted() {
        let long_prefix = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(long_prefix.len(), 253);
        let sel = serde_json::json!({
            "matchLabels": {
                "app": "",
                "a": "B",
                "x.y_z-1": "v.1_-X",
                "example.com/App_1": "a".repeat(63),
                format!("{long_prefix}/{}", "n".repeat(63)): "1",
            },
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["", "x"]},
                {"key": "9", "operator": "NotIn", "values": ["0"]},
                {"key": "a-b.c/d", "operator": "Exists"},
                {"key": "Z", "operator": "DoesNotExist", "values": []},
            ]
        });
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": sel, "ingress": [{"from": [{"podSelector": sel, "namespaceSelector": sel}]}]}
        })))
        .unwrap();
        assert_eq!(p.pod_selector.requirements.len(), 9);
        // One character more in the prefix, or in the name, is too long.
        for key in [format!("{long_prefix}x/n"), format!("a/{}", "n".repeat(64))] {
            let err = policy(&np(serde_json::json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {key.clone(): "a"}}}
            })))
            .expect_err(&key);
            assert_eq!(err.field, "spec.podSelector.matchLabels");
        }
    }

    #[test]
    fn invalid_labels_on_pods_and_namespaces_are_rejected() {
        let err = pod(&serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "has space"}}
        }))
        .unwrap())
        .unwrap_err();
        assert_eq!(
            (err.kind, err.object.as_str(), err.field.as_str()),
            ("Pod", "x/a", "metadata.labels")
        );
        assert!(err.message.contains("has space"), "{}", err.message);
        let err = namespace(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "labels": {"bad key": "v"}}
            }))
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            (err.kind, err.object.as_str(), err.field.as_str()),
            ("Namespace", "x", "metadata.labels")
        );
        assert!(err.message.contains("bad key"), "{}", err.message);
    }

    fn json_sel(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn except_outside_cidr_is_rejected() {
        let err = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.1.0.0/25"]}}]}]}
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].from[0].ipBlock.except[0]");
        assert_eq!(err.object, "x/p");
    }

    #[test]
    fn host_bits_are_accepted() {
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.244.1.10/4", "except": ["10.244.1.11/32"]}}]}]}
        })))
        .unwrap();
        let Some(Some(peers)) = p.egress.first().map(|r| r.peers.clone()) else {
            panic!("no peers")
        };
        assert_eq!(
            peers[0],
            Peer::IpBlock {
                cidr: "0.0.0.0/4".parse().unwrap(),
                except: vec!["10.244.1.11/32".parse().unwrap()]
            }
        );
    }

    #[test]
    fn bad_operator_and_protocol() {
        let err = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["b"]}]}}
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.podSelector.matchExpressions[0].operator");
        let err = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].ports[0].protocol");
    }

    #[test]
    fn end_port_range() {
        let p = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8080}]}]}
        })))
        .unwrap();
        assert_eq!(
            p.ingress[0].ports.as_ref().unwrap()[0],
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortMatch::Range(8000, 8080)
            }
        );
        let err = policy(&np(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 70000}]}]}
        })))
        .unwrap_err();
        assert_eq!(err.field, "spec.ingress[0].ports[0].endPort");
    }
}
