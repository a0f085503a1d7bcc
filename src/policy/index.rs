//! The cluster index: the current Namespaces, Pods and NetworkPolicies with the lookups the
//! compiler needs (pods by namespace, by label, by node, by named port and by address; policies
//! by namespace), so that resolving a selector never scans every pod of the cluster.
//!
//! The index is plain data owned by one task; watchers and the file source feed it with
//! upserts and deletes, and the compiler only reads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::model::{
    ClusterPolicy, ClusterPolicyKey, ClusterState, Labels, Namespace, NamespaceScope, Node,
    ObjectKey, Pod, Policy, Requirement, Selector,
};

/// The label the API server puts on every namespace (Kubernetes 1.21 and later).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Default, Clone)]
pub struct ClusterIndex {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<ObjectKey, Pod>,
    policies: BTreeMap<ObjectKey, Policy>,
    pods_by_ns: HashMap<String, BTreeSet<ObjectKey>>,
    pods_by_label: HashMap<(String, String), BTreeSet<ObjectKey>>,
    pods_by_node: HashMap<String, BTreeSet<ObjectKey>>,
    pods_by_port_name: HashMap<String, BTreeSet<ObjectKey>>,
    /// Almost always one pod an address: a sorted Vec, not a B-tree node per address.
    pods_by_ip: HashMap<IpAddr, Vec<ObjectKey>>,
    /// One copy of each distinct label map of the indexed pods (replicas share theirs), with
    /// how many indexed pods use it: a count of our own, so that a copy someone else still
    /// holds (a removed pod returned to the caller) does not keep it here.
    pod_labels: HashMap<Arc<Labels>, usize>,
    policies_by_ns: HashMap<String, BTreeSet<ObjectKey>>,
    /// ClusterNetworkPolicies (and the v1alpha1 kinds), in evaluation order within a tier
    /// only after sorting by [`ClusterPolicy::order`].
    cluster_policies: BTreeMap<ClusterPolicyKey, ClusterPolicy>,
    /// Nodes, for `nodes` peers.
    nodes: BTreeMap<String, Node>,
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<ObjectKey>>, k: K, v: &ObjectKey) {
    map.entry(k).or_default().insert(v.clone());
}

fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<ObjectKey>>, k: K, v: &ObjectKey) {
    if let Some(set) = map.get_mut(&k) {
        set.remove(v);
        if set.is_empty() {
            map.remove(&k);
        }
    }
}

impl ClusterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_state(state: &ClusterState) -> Self {
        let mut index = Self::new();
        for ns in &state.namespaces {
            index.upsert_namespace(ns.clone());
        }
        for pod in &state.pods {
            index.upsert_pod(pod.clone());
        }
        for policy in &state.policies {
            index.upsert_policy(policy.clone());
        }
        for policy in &state.cluster_policies {
            index.upsert_cluster_policy(policy.clone());
        }
        for node in &state.nodes {
            index.upsert_node(node.clone());
        }
        index
    }

    // --- writes -----------------------------------------------------------------------------

    /// Inserts or replaces a namespace; returns the previous version.
    pub fn upsert_namespace(&mut self, ns: Namespace) -> Option<Namespace> {
        self.namespaces.insert(ns.name.clone(), ns)
    }

    pub fn remove_namespace(&mut self, name: &str) -> Option<Namespace> {
        self.namespaces.remove(name)
    }

    /// Inserts or replaces a pod; returns the previous version.
    pub fn upsert_pod(&mut self, mut pod: Pod) -> Option<Pod> {
        let old = self.remove_pod(&pod.key);
        let key = pod.key.clone();
        if let Some((shared, _)) = self.pod_labels.get_key_value(&*pod.labels) {
            pod.labels = shared.clone();
        }
        *self.pod_labels.entry(pod.labels.clone()).or_default() += 1;
        add(&mut self.pods_by_ns, key.namespace.clone(), &key);
        for (k, v) in pod.labels.iter() {
            add(&mut self.pods_by_label, (k.clone(), v.clone()), &key);
        }
        if let Some(node) = &pod.node {
            add(&mut self.pods_by_node, node.clone(), &key);
        }
        for port in &pod.ports {
            if let Some(name) = &port.name {
                add(&mut self.pods_by_port_name, name.clone(), &key);
            }
        }
        for ip in &pod.ips {
            let keys = self.pods_by_ip.entry(*ip).or_default();
            if let Err(at) = keys.binary_search(&key) {
                keys.insert(at, key.clone());
            }
        }
        self.pods.insert(key, pod);
        old
    }

    pub fn remove_pod(&mut self, key: &ObjectKey) -> Option<Pod> {
        let pod = self.pods.remove(key)?;
        if let Some(users) = self.pod_labels.get_mut(&*pod.labels) {
            *users -= 1;
            if *users == 0 {
                self.pod_labels.remove(&*pod.labels);
            }
        }
        remove(&mut self.pods_by_ns, key.namespace.clone(), key);
        for (k, v) in pod.labels.iter() {
            remove(&mut self.pods_by_label, (k.clone(), v.clone()), key);
        }
        if let Some(node) = &pod.node {
            remove(&mut self.pods_by_node, node.clone(), key);
        }
        for port in &pod.ports {
            if let Some(name) = &port.name {
                remove(&mut self.pods_by_port_name, name.clone(), key);
            }
        }
        for ip in &pod.ips {
            if let Some(keys) = self.pods_by_ip.get_mut(ip) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.pods_by_ip.remove(ip);
                }
            }
        }
        Some(pod)
    }

    pub fn upsert_policy(&mut self, policy: Policy) -> Option<Policy> {
        add(
            &mut self.policies_by_ns,
            policy.key.namespace.clone(),
            &policy.key,
        );
        self.policies.insert(policy.key.clone(), policy)
    }

    pub fn remove_policy(&mut self, key: &ObjectKey) -> Option<Policy> {
        let old = self.policies.remove(key)?;
        remove(&mut self.policies_by_ns, key.namespace.clone(), key);
        Some(old)
    }

    pub fn upsert_cluster_policy(&mut self, policy: ClusterPolicy) -> Option<ClusterPolicy> {
        self.cluster_policies.insert(policy.key.clone(), policy)
    }

    pub fn remove_cluster_policy(&mut self, key: &ClusterPolicyKey) -> Option<ClusterPolicy> {
        self.cluster_policies.remove(key)
    }

    pub fn upsert_node(&mut self, node: Node) -> Option<Node> {
        self.nodes.insert(node.name.clone(), node)
    }

    pub fn remove_node(&mut self, name: &str) -> Option<Node> {
        self.nodes.remove(name)
    }

    // --- reads ------------------------------------------------------------------------------

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.get(key)
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    pub fn policy(&self, key: &ObjectKey) -> Option<&Policy> {
        self.policies.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn cluster_policy(&self, key: &ClusterPolicyKey) -> Option<&ClusterPolicy> {
        self.cluster_policies.get(key)
    }

    /// Every cluster policy, by key (not in evaluation order).
    pub fn cluster_policies(&self) -> impl Iterator<Item = &ClusterPolicy> {
        self.cluster_policies.values()
    }

    pub fn cluster_policy_count(&self) -> usize {
        self.cluster_policies.len()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The cluster policies whose subject selects this pod, in evaluation order (tier,
    /// priority, name, kind). hostNetwork pods are never subjects.
    pub fn cluster_policies_selecting<'a>(&'a self, pod: &Pod) -> Vec<&'a ClusterPolicy> {
        if pod.host_network {
            return Vec::new();
        }
        let ns_labels = self.namespace_labels(&pod.key.namespace);
        let mut out: Vec<&ClusterPolicy> = self
            .cluster_policies
            .values()
            .filter(|p| p.subject.matches(ns_labels, &pod.labels))
            .collect();
        out.sort_by(|a, b| a.order().cmp(&b.order()));
        out
    }

    /// Pods in namespaces matching `namespaces` whose labels match `pods`.
    pub fn select_pods_in(&self, namespaces: &Selector, pods: &Selector) -> Vec<&Pod> {
        self.select_pods(&NamespaceScope::Selected(namespaces.clone()), pods)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Labels of a namespace; a namespace nobody has described has none.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|ns| &ns.labels)
    }

    /// Pods scheduled on `node`.
    pub fn pods_on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Pods whose status lists `ip` (more than one only while an address is being reused).
    pub fn pods_with_ip(&self, ip: IpAddr) -> impl Iterator<Item = &Pod> {
        self.pods_by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Pods that declare a container port with this name (any protocol).
    pub fn pods_with_port_name<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods_by_port_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Policies of a namespace.
    pub fn policies_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies_by_ns
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.policies.get(k))
    }

    /// Policies of the pod's namespace whose podSelector selects it.
    pub fn policies_selecting<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies_in(&pod.key.namespace)
            .filter(|p| p.pod_selector.matches(&pod.labels))
    }

    /// Namespaces in the scope of a peer.
    pub fn namespaces_in_scope<'a>(&'a self, scope: &'a NamespaceScope) -> Vec<&'a str> {
        match scope {
            NamespaceScope::Own(ns) => vec![ns.as_str()],
            NamespaceScope::Selected(sel) => self
                .namespaces
                .values()
                .filter(|ns| sel.matches(&ns.labels))
                .map(|ns| ns.name.as_str())
                .collect(),
        }
    }

    /// Pods matching `pods` inside the namespaces of `scope`, found through the label index when
    /// the selector has an equality requirement, so that no selector scans the whole cluster.
    pub fn select_pods(&self, scope: &NamespaceScope, pods: &Selector) -> Vec<&Pod> {
        let namespaces = self.namespaces_in_scope(scope);
        let mut out = Vec::new();
        let narrowest = pods
            .requirements
            .iter()
            .filter_map(|r| match r {
                Requirement::In(k, vs) => Some(
                    vs.iter()
                        .filter_map(|v| self.pods_by_label.get(&(k.clone(), v.clone())))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .min_by_key(|sets| sets.iter().map(|s| s.len()).sum::<usize>());
        match narrowest {
            Some(sets) => {
                let wanted: BTreeSet<&str> = namespaces.into_iter().collect();
                for key in sets.into_iter().flatten() {
                    if wanted.contains(key.namespace.as_str())
                        && let Some(pod) = self.pods.get(key)
                        && pods.matches(&pod.labels)
                    {
                        out.push(pod);
                    }
                }
            }
            None => {
                for ns in namespaces {
                    for key in self.pods_by_ns.get(ns).into_iter().flatten() {
                        if let Some(pod) = self.pods.get(key)
                            && pods.matches(&pod.labels)
                        {
                            out.push(pod);
                        }
                    }
                }
            }
        }
        out
    }

    /// Whether a pod (with these labels, in this namespace) falls under a peer's selectors.
    pub fn peer_matches(
        &self,
        scope: &NamespaceScope,
        pods: &Selector,
        namespace: &str,
        labels: &Labels,
    ) -> bool {
        let ns_ok = match scope {
            NamespaceScope::Own(ns) => ns == namespace,
            NamespaceScope::Selected(sel) => self
                .namespace_labels(namespace)
                .is_some_and(|l| sel.matches(l)),
        };
        ns_ok && pods.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, ip: &str) -> Pod {
        Pod {
            key: ObjectKey::new("ns", name),
            labels: Arc::new(Labels::from([("app".to_string(), app.to_string())])),
            node: None,
            ips: vec![ip.parse().expect("ip")],
            ports: vec![],
            host_network: false,
            phase: None,
        }
    }

    #[test]
    fn pods_with_equal_labels_share_one_copy_until_the_last_is_gone() {
        let mut index = ClusterIndex::new();
        index.upsert_pod(pod("a", "web", "10.0.0.1"));
        index.upsert_pod(pod("b", "web", "10.0.0.2"));
        index.upsert_pod(pod("c", "db", "10.0.0.3"));
        let labels =
            |index: &ClusterIndex, n: &str| index.pods[&ObjectKey::new("ns", n)].labels.clone();
        assert!(Arc::ptr_eq(&labels(&index, "a"), &labels(&index, "b")));
        assert!(!Arc::ptr_eq(&labels(&index, "a"), &labels(&index, "c")));
        assert_eq!(index.pod_labels.len(), 2);
        // A relabel moves the pod to the other copy; deleting every "web" pod drops that copy.
        index.upsert_pod(pod("a", "db", "10.0.0.1"));
        assert!(Arc::ptr_eq(&labels(&index, "a"), &labels(&index, "c")));
        index.remove_pod(&ObjectKey::new("ns", "b"));
        assert_eq!(index.pod_labels.len(), 1);
        assert_eq!(
            index.pods_by_label[&("app".to_string(), "db".to_string())].len(),
            2
        );
        // The last "db" pods removed while their caller still holds them: the copy goes too.
        let held = [
            index.remove_pod(&ObjectKey::new("ns", "a")),
            index.remove_pod(&ObjectKey::new("ns", "c")),
        ];
        assert!(held.iter().all(Option::is_some));
        assert!(index.pod_labels.is_empty());
    }

    #[test]
    fn an_address_two_pods_claim_lists_both_until_one_lets_go() {
        let mut index = ClusterIndex::new();
        index.upsert_pod(pod("b", "web", "10.0.0.9"));
        index.upsert_pod(pod("a", "web", "10.0.0.9"));
        let names = |index: &ClusterIndex| -> Vec<String> {
            index
                .pods_with_ip("10.0.0.9".parse().expect("ip"))
                .map(|p| p.key.name.clone())
                .collect()
        };
        assert_eq!(names(&index), ["a", "b"], "sorted");
        index.upsert_pod(pod("a", "web", "10.0.0.8"));
        assert_eq!(names(&index), ["b"]);
        index.remove_pod(&ObjectKey::new("ns", "b"));
        assert!(names(&index).is_empty());
        assert!(
            !index
                .pods_by_ip
                .contains_key(&"10.0.0.9".parse().expect("ip"))
        );
    }
}
