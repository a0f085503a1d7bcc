//! The wire format of the `policy.networking.k8s.io` kinds nftpol reads, as serde types (no
//! generated crate exists for them): ClusterNetworkPolicy `v1beta1` and `v1alpha2` (one shape),
//! and AdminNetworkPolicy and BaselineAdminNetworkPolicy `v1alpha1` as of v0.1.7.
//!
//! Only the shape is checked here; `convert` validates the values as the CRD's schema and CEL
//! rules do. Fields nftpol does not know are kept (`other`) so that a peer or protocol with no
//! known field is seen and fails closed instead of being read as an empty one.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde_json::Value;

pub const GROUP: &str = "policy.networking.k8s.io";

/// Fields of an object that no known field took.
pub type Unknown = BTreeMap<String, Value>;

// --- ClusterNetworkPolicy v1beta1 / v1alpha2 -------------------------------------------------

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: CnpSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSpec {
    pub tier: String,
    pub priority: i64,
    pub subject: Subject,
    #[serde(default)]
    pub ingress: Option<Vec<CnpIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<CnpEgressRule>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
    #[serde(flatten)]
    pub other: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Optional since v0.3.0's CRDs (the upstream conformance suite omits it): absent means
    /// every namespace, as an empty selector does.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpIngressRule {
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    pub from: Vec<Peer>,
    #[serde(default)]
    pub protocols: Option<Vec<CnpProtocol>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpEgressRule {
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    pub to: Vec<Peer>,
    #[serde(default)]
    pub protocols: Option<Vec<CnpProtocol>>,
}

/// An ingress or egress peer: at most one field may be set. Ingress peers only know
/// `namespaces` and `pods`; `convert` rejects the others there as the CRD would.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub nodes: Option<LabelSelector>,
    #[serde(default)]
    pub domain_names: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpProtocol {
    #[serde(default)]
    pub tcp: Option<ProtocolPort>,
    #[serde(default)]
    pub udp: Option<ProtocolPort>,
    #[serde(default)]
    pub sctp: Option<ProtocolPort>,
    #[serde(default)]
    pub destination_named_port: Option<String>,
    #[serde(flatten)]
    pub other: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    #[serde(default)]
    pub destination_port: Option<DestinationPort>,
    #[serde(flatten)]
    pub other: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPort {
    #[serde(default)]
    pub number: Option<i64>,
    #[serde(default)]
    pub range: Option<PortRange>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    pub start: i64,
    pub end: i64,
}

// --- AdminNetworkPolicy / BaselineAdminNetworkPolicy v1alpha1 (v0.1.7) -----------------------

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: AnpSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpSpec {
    pub priority: i64,
    pub subject: Subject,
    #[serde(default)]
    pub ingress: Option<Vec<AnpIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<AnpEgressRule>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BanpSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BanpSpec {
    pub subject: Subject,
    #[serde(default)]
    pub ingress: Option<Vec<AnpIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<AnpEgressRule>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpIngressRule {
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    pub from: Vec<Peer>,
    #[serde(default)]
    pub ports: Option<Vec<AnpPort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpEgressRule {
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    pub to: Vec<Peer>,
    #[serde(default)]
    pub ports: Option<Vec<AnpPort>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpPort {
    #[serde(default)]
    pub port_number: Option<AnpPortNumber>,
    #[serde(default)]
    pub named_port: Option<String>,
    #[serde(default)]
    pub port_range: Option<AnpPortRange>,
    #[serde(flatten)]
    pub other: Unknown,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpPortNumber {
    #[serde(default)]
    pub protocol: Option<String>,
    pub port: i64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnpPortRange {
    #[serde(default)]
    pub protocol: Option<String>,
    pub start: i64,
    pub end: i64,
}
