//! The upstream conformance corpus (tests/conformance/upstream, see its README) and nftpol's
//! own cases in the same format (tests/conformance/nftpol): loading the cases and turning each
//! step's cumulative cluster state into Kubernetes manifests (Namespaces, Pods with their
//! container ports and addresses, NetworkPolicies), so that the evaluator and the real
//! dataplane read the corpus through the same manifest path as users.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/upstream")
}

/// nftpol's own cases (tests/conformance/nftpol): same model and format, not from upstream.
pub fn own_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/nftpol")
}

#[derive(Debug, Clone, Deserialize)]
pub struct Model {
    pub namespaces: Vec<ModelNamespace>,
    pub pods: Vec<ModelPod>,
    pub pod_order: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelNamespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: String,
    pub model: CaseModel,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CaseModel {
    pub ports: Vec<u16>,
    pub protocols: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub description: String,
    pub apply: Vec<Value>,
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub port: u16,
    pub protocol: String,
    pub expect: BTreeMap<String, BTreeMap<String, bool>>,
}

pub fn load_model() -> Model {
    let text = std::fs::read_to_string(corpus_dir().join("model.json")).expect("model.json");
    serde_json::from_str(&text).expect("model.json parses")
}

/// Every upstream case, sorted by id.
pub fn load_cases() -> Vec<Case> {
    load_cases_in(&corpus_dir())
}

/// Every case of nftpol's own set, sorted by id.
pub fn load_own_cases() -> Vec<Case> {
    load_cases_in(&own_dir())
}

fn load_cases_in(dir: &Path) -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("model.json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("case file");
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    cases
}

/// The cluster state of a case, mutated step by step.
#[derive(Debug, Clone)]
pub struct State {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// "ns/name" -> (labels, ip)
    pub pods: BTreeMap<String, (BTreeMap<String, String>, String)>,
    /// (namespace, name) -> policy object
    pub policies: BTreeMap<(String, String), Value>,
    /// (kind, name) -> ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy
    pub cluster_policies: BTreeMap<(String, String), Value>,
    /// Extra container ports per pod ("ns/name" -> [(name, port, protocol)]).
    pub extra_ports: BTreeMap<String, Vec<(String, u16, String)>>,
    pub ports: Vec<u16>,
    pub protocols: Vec<String>,
}

fn relabel(labels: &mut BTreeMap<String, String>, op: &Value) {
    if let Some(set) = op.get("set").and_then(|v| v.as_object()) {
        *labels = set
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
    }
    if let Some(add) = op.get("add").and_then(|v| v.as_object()) {
        for (k, v) in add {
            labels.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    for k in op
        .get("remove")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(k) = k.as_str() {
            labels.remove(k);
        }
    }
}

impl State {
    pub fn new(model: &Model, case: &Case) -> Self {
        State {
            namespaces: model
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            pods: model
                .pods
                .iter()
                .map(|p| {
                    (
                        format!("{}/{}", p.namespace, p.name),
                        (p.labels.clone(), p.ip.clone()),
                    )
                })
                .collect(),
            policies: BTreeMap::new(),
            cluster_policies: BTreeMap::new(),
            extra_ports: BTreeMap::new(),
            ports: case.model.ports.clone(),
            protocols: case.model.protocols.clone(),
        }
    }

    /// Applies one step's `apply` items in order.
    pub fn apply(&mut self, step: &Step) {
        for item in &step.apply {
            if item.get("kind").and_then(|k| k.as_str()) == Some("NetworkPolicy") {
                let ns = item["metadata"]["namespace"].as_str().unwrap_or("default");
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                self.policies
                    .insert((ns.to_string(), name.to_string()), item.clone());
            } else if matches!(
                item.get("kind").and_then(|k| k.as_str()),
                Some("ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy")
            ) {
                let kind = item["kind"].as_str().unwrap_or_default().to_string();
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                self.cluster_policies
                    .insert((kind, name.to_string()), item.clone());
            } else if let Some(op) = item.get("delete_cluster_policy") {
                let kind = op["kind"]
                    .as_str()
                    .unwrap_or("ClusterNetworkPolicy")
                    .to_string();
                let name = op["name"].as_str().unwrap_or_default().to_string();
                self.cluster_policies.remove(&(kind, name));
            } else if let Some(op) = item.get("add_container_port") {
                // {"pod": "ns/name", "name": "web", "port": 8080, "protocol": "TCP"}
                let pod = op["pod"].as_str().unwrap_or_default().to_string();
                self.extra_ports.entry(pod).or_default().push((
                    op["name"].as_str().unwrap_or_default().to_string(),
                    op["port"].as_u64().unwrap_or_default() as u16,
                    op["protocol"].as_str().unwrap_or("TCP").to_string(),
                ));
            } else if let Some(op) = item.get("relabel_namespace") {
                let ns = op["namespace"].as_str().unwrap_or_default();
                relabel(self.namespaces.entry(ns.to_string()).or_default(), op);
            } else if let Some(op) = item.get("relabel_pod") {
                let pod = op["pod"].as_str().unwrap_or_default();
                let entry = self.pods.get_mut(pod).expect("relabelled pod exists");
                relabel(&mut entry.0, op);
            } else if let Some(op) = item.get("delete_policy") {
                let ns = op["namespace"].as_str().unwrap_or_default().to_string();
                let name = op["name"].as_str().unwrap_or_default().to_string();
                self.policies.remove(&(ns, name));
            } else if let Some(op) = item.get("delete_all_policies") {
                let nss: Vec<&str> = op["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                self.policies
                    .retain(|(ns, _), _| !nss.contains(&ns.as_str()));
            } else if let Some(op) = item.get("delete_pod") {
                let pod = op["pod"].as_str().unwrap_or_default();
                self.pods.remove(pod);
            } else {
                panic!("unknown apply item {item}");
            }
        }
    }

    /// The state as Kubernetes objects. Pods run one container per (port, protocol) of the case,
    /// with a containerPort named `serve-<port>-<protocol>`. `node` sets spec.nodeName.
    pub fn manifests(&self, node: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, labels) in &self.namespaces {
            out.push(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}
            }));
        }
        for (key, (labels, ip)) in &self.pods {
            let (ns, name) = key.split_once('/').expect("ns/name");
            let mut containers = Vec::new();
            for port in &self.ports {
                for proto in &self.protocols {
                    let lower = proto.to_lowercase();
                    containers.push(json!({
                        "name": format!("cont-{port}-{lower}"),
                        "image": "registry.k8s.io/e2e-test-images/agnhost:2.43",
                        "ports": [{"containerPort": port, "protocol": proto,
                                   "name": format!("serve-{port}-{lower}")}]
                    }));
                }
            }
            for (pname, port, proto) in self.extra_ports.get(key).into_iter().flatten() {
                containers.push(json!({
                    "name": format!("extra-{pname}"),
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.43",
                    "ports": [{"containerPort": port, "protocol": proto, "name": pname}]
                }));
            }
            let mut spec = json!({"containers": containers});
            if let Some(node) = node {
                spec["nodeName"] = json!(node);
            }
            out.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": spec,
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            }));
        }
        out.extend(self.policies.values().cloned());
        out.extend(self.cluster_policies.values().cloned());
        out
    }
}

/// Off-diagonal cells where `got` differs from `expect`, as "from -> to: expected X, got Y".
pub fn mismatches(
    expect: &BTreeMap<String, BTreeMap<String, bool>>,
    got: &BTreeMap<String, BTreeMap<String, bool>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (from, row) in expect {
        for (to, want) in row {
            if from == to {
                continue;
            }
            let have = got.get(from).and_then(|r| r.get(to)).copied();
            if have != Some(*want) {
                out.push(format!("{from} -> {to}: expected {want}, got {have:?}"));
            }
        }
    }
    out
}
