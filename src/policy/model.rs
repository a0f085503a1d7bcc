//! The cluster model: compact, validated domain types for Namespaces, Pods and NetworkPolicies.
//!
//! These are what the index stores and the compiler reads. They are built from k8s-openapi
//! objects by `convert` (the only place that knows the Kubernetes wire format), so everything
//! here is already validated: CIDRs parse, ports are in range, protocols are known, label keys
//! and values are ones the API server stores, and the NetworkPolicy defaulting rules
//! (policyTypes, protocol TCP, empty vs absent lists) are applied. The one exception is a
//! value in a selector's In/NotIn list, kept as written even if invalid (the API server still
//! stores such values in old policies): it equals no label value, so it matches nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Labels of a pod or namespace, ordered so that everything derived from them is deterministic.
pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a namespaced object (a pod or a policy).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The transport protocols NetworkPolicy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`); also what nft prints lower-cased.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    /// Kubernetes protocols are case-sensitive upper case; lower case is accepted on the CLI.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// One requirement of a label selector. `matchLabels` entries become `In` with one value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }
}

/// A label selector: every requirement must hold. No requirement selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", vs[0]),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// `nftpol.io/enforcement: audit`: the policies of its pods log and count what they would
    /// drop, and drop nothing.
    pub audit: bool,
}

/// A port a container declares; named ports are resolved against these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: ObjectKey,
    /// Shared by the pods with the same labels (the replicas of a Deployment) once indexed.
    pub labels: Arc<Labels>,
    pub node: Option<String>,
    /// status.podIPs (or status.podIP), deduplicated, in the order the API lists them.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    pub phase: Option<String>,
}

/// Why a pod takes no part in enforcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// It shares the node's addresses: it cannot be told apart from the node.
    HostNetwork,
    /// No address yet (not scheduled or not started).
    NoAddress,
    /// Succeeded or Failed: its address may already belong to another pod.
    Terminated,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "hostNetwork",
            SkipReason::NoAddress => "no address",
            SkipReason::Terminated => "terminated",
        }
    }
}

impl Pod {
    /// `None` when the pod is an endpoint and a peer like any other.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        if self.host_network {
            Some(SkipReason::HostNetwork)
        } else if matches!(self.phase.as_deref(), Some("Succeeded" | "Failed")) {
            Some(SkipReason::Terminated)
        } else if self.ips.is_empty() {
            Some(SkipReason::NoAddress)
        } else {
            None
        }
    }

    /// The container port that a named port resolves to on this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// Direction of traffic relative to the pod that a policy selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which pods a peer's pod selector ranges over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// A peer with only `podSelector`: the policy's own namespace.
    Own(String),
    /// `namespaceSelector` (ANDed with the pod selector of the same peer).
    Selected(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

/// Which port(s) of one protocol a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// `port` omitted: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range.
    Range(u16, u16),
    /// A named port, resolved on the destination pod.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One ingress or egress rule. `None` lists mean "everything" (the list was empty or absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: ObjectKey,
    pub pod_selector: Selector,
    /// Whether the policy isolates the pods it selects for ingress (after policyTypes defaulting).
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Rules of each direction; they only matter when the policy isolates that direction.
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Annotations nftpol understands (`nftpol.io/log`).
    pub log_allowed: bool,
}

impl Policy {
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Everything the compiler reads, as a plain snapshot.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    pub nodes: Vec<Node>,
}

// --- ClusterNetworkPolicy (policy.networking.k8s.io) -----------------------------------------

/// The tier of a cluster policy: Admin before NetworkPolicy, Baseline after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API kind a cluster policy was read from. Its order is the order among policies of one
/// tier, priority and name; `BaselineAdminNetworkPolicy` (which has no priority) is always
/// ordered after every Baseline ClusterNetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ClusterPolicyKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl ClusterPolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterPolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterPolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

impl fmt::Display for ClusterPolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cluster-scoped policy's identity: the kind is part of it, so that a
/// BaselineAdminNetworkPolicy `default` and a ClusterNetworkPolicy `default` differ.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ClusterPolicyKey {
    pub kind: ClusterPolicyKind,
    pub name: String,
}

impl ClusterPolicyKey {
    pub fn new(kind: ClusterPolicyKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    /// `ClusterNetworkPolicy` is the common case and is written `name` alone.
    pub fn short(&self) -> String {
        match self.kind {
            ClusterPolicyKind::ClusterNetworkPolicy => self.name.clone(),
            kind => format!("{kind}/{}", self.name),
        }
    }
}

impl fmt::Display for ClusterPolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// What a matching cluster policy rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Action {
    /// Allows this direction: NetworkPolicy and Baseline are not consulted.
    Accept,
    /// Drops silently (never a reject).
    Deny,
    /// Leaves the tier: the next one decides.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pods a cluster policy applies to (hostNetwork pods never).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the namespaces matching the selector.
    Namespaces(Selector),
    /// Pods matching `pods` in namespaces matching `namespaces`.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl Subject {
    pub fn matches(&self, namespace_labels: Option<&Labels>, pod_labels: &Labels) -> bool {
        match self {
            Subject::Namespaces(ns) => namespace_labels.is_some_and(|l| ns.matches(l)),
            Subject::Pods { namespaces, pods } => {
                namespace_labels.is_some_and(|l| namespaces.matches(l)) && pods.matches(pod_labels)
            }
        }
    }
}

/// One peer of a cluster policy rule: exactly one field, as the API requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Egress only: addresses, pod addresses included.
    Networks(Vec<IpNet>),
    /// Egress only: the addresses of matching Nodes.
    Nodes(Selector),
    /// Egress only, Accept only: the addresses DNS answers for these names carry, learned at
    /// run time (`crate::policy::domain`).
    DomainNames(Vec<String>),
    /// A peer with no field nftpol knows (a newer API): the fields it had. Fails closed: matches
    /// nothing in an Accept rule and everything in a Deny or Pass rule.
    Unknown(Vec<String>),
}

/// One entry of a rule's `protocols` (or a v1alpha1 rule's `ports`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPort {
    /// `tcp`/`udp`/`sctp` with a `number` (start == end) or an inclusive `range`.
    Ports {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// `destinationNamedPort`: resolved on the destination pod, for any protocol it declares.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// The rule's `name`, if it has one.
    pub name: Option<String>,
    /// Its index in the direction's list, as written.
    pub index: usize,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    /// `None`: every protocol and port.
    pub protocols: Option<Vec<ClusterPort>>,
}

impl ClusterRule {
    /// How explain and logs name the rule: its name, else `#index`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("#{}", self.index),
        }
    }

    /// Only `domainNames` peers: the rule matches learned addresses only.
    pub fn domain_names_only(&self) -> bool {
        !self.peers.is_empty()
            && self
                .peers
                .iter()
                .all(|p| matches!(p, ClusterPeer::DomainNames(_)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub key: ClusterPolicyKey,
    pub tier: Tier,
    /// 0..=1000, lower first. A BaselineAdminNetworkPolicy has none: it is ordered last.
    pub priority: Option<u32>,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

/// The order of cluster policies within a tier: priority ascending (none last), then name,
/// then kind.
pub type ClusterPolicyOrder<'a> = (Tier, u32, &'a str, ClusterPolicyKind);

impl ClusterPolicy {
    pub fn rules(&self, direction: Direction) -> &[ClusterRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The evaluation order: tier, priority (a BANP after every priority), name, kind.
    pub fn order(&self) -> ClusterPolicyOrder<'_> {
        (
            self.tier,
            self.priority.unwrap_or(u32::MAX),
            &self.key.name,
            self.key.kind,
        )
    }
}

/// A Node, for `nodes` peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The addresses of status.addresses that are IPs, deduplicated.
    pub addresses: Vec<IpAddr>,
}
