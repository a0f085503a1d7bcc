//! The reconciler: applies source [`Update`]s to the cluster index and the incremental
//! compiler, so that each event does only the work it implies (a pod change re-resolves only
//! the peer sets it moves, a policy change recompiles the pods it selects, a namespace relabel
//! re-evaluates namespace selectors). Pure: the caller programs the resulting plan.
//!
//! A relist is diffed against the index object by object, so that deletions that happened
//! while nobody watched are applied like any other. An object a relist names as present but
//! not converting keeps its last valid version, as after a watch update that does not convert
//! (the source sends none): only absence from a relist, or a deletion, removes an object.
//! Until every kind has been listed once the reconciler is not ready: the caller leaves the
//! previous ruleset in force until then.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::policy::compile::{Compiler, NodePlan, Scope};
use crate::policy::index::ClusterIndex;
use crate::policy::model::{
    ClusterPolicy, ClusterPolicyKey, Namespace, Node, ObjectKey, Pod, Policy,
};
use crate::source::{Change, Listing, Update};

/// The kinds that must be listed once before the plan means anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Policy,
}

#[derive(Debug)]
pub struct Reconciler {
    index: ClusterIndex,
    compiler: Compiler,
    listed: BTreeSet<Kind>,
    pod_cidrs: Vec<IpNet>,
    /// Whether anything changed since the last [`Reconciler::take_dirty`].
    dirty: bool,
}

impl Reconciler {
    pub fn new(node: &str) -> Self {
        Self {
            index: ClusterIndex::new(),
            compiler: Compiler::new(Scope::Node(node.to_string())),
            listed: BTreeSet::new(),
            pod_cidrs: Vec::new(),
            dirty: false,
        }
    }

    /// Every kind has been listed at least once: the plan reflects the cluster.
    pub fn ready(&self) -> bool {
        self.listed.len() == 3
    }

    pub fn plan(&self) -> &NodePlan {
        self.compiler.plan()
    }

    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    pub fn pod_cidrs(&self) -> &[IpNet] {
        &self.pod_cidrs
    }

    /// Whether the plan (or anything the ruleset depends on) changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Applies one update. Before the first complete listing the index is only filled; the
    /// plan is compiled in one go when the last kind is listed.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Namespace(change) => self.namespaces(change),
            Update::Pod(change) => self.pods(change),
            Update::Policy(change) => self.policies(change),
            Update::ClusterPolicy(change) => self.cluster_policies(change),
            Update::Node(change) => self.nodes(change),
            Update::NodePodCidrs(cidrs) => {
                if cidrs != self.pod_cidrs {
                    self.pod_cidrs = cidrs;
                    self.dirty = true;
                }
            }
            Update::WatchError { .. } => {}
        }
    }

    /// Recompiles everything from the index and returns how many endpoints the incremental
    /// plan had wrong (0 unless an event was missed or mishandled).
    pub fn full_resync(&mut self) -> usize {
        let before = self.compiler.plan().clone();
        self.compiler.full(&self.index);
        let after = self.compiler.plan();
        let keys: BTreeSet<&ObjectKey> = before
            .endpoints
            .keys()
            .chain(after.endpoints.keys())
            .collect();
        let fixed = keys
            .into_iter()
            .filter(|k| before.endpoints.get(*k) != after.endpoints.get(*k))
            .count();
        if fixed > 0 {
            self.dirty = true;
        }
        fixed
    }

    fn listed(&mut self, kind: Kind) {
        let was_ready = self.ready();
        self.listed.insert(kind);
        if !was_ready && self.ready() {
            self.compiler.full(&self.index);
            self.dirty = true;
        }
    }

    fn namespace_upsert(&mut self, ns: Namespace) {
        if self.index.namespace(&ns.name) == Some(&ns) {
            return;
        }
        let old = self.index.upsert_namespace(ns.clone());
        if self.ready() {
            self.dirty |= !self
                .compiler
                .namespace_changed(&self.index, old.as_ref(), Some(&ns))
                .is_empty();
        }
    }

    fn namespace_delete(&mut self, name: &str) {
        if let Some(old) = self.index.remove_namespace(name)
            && self.ready()
        {
            self.dirty |= !self
                .compiler
                .namespace_changed(&self.index, Some(&old), None)
                .is_empty();
        }
    }

    fn namespaces(&mut self, change: Change<Namespace, String>) {
        match change {
            Change::Applied(ns) => self.namespace_upsert(ns),
            Change::Deleted(name) => self.namespace_delete(&name),
            Change::Relisted(Listing { objects, invalid }) => {
                let keep: BTreeSet<String> = objects
                    .iter()
                    .map(|n| n.name.clone())
                    .chain(invalid)
                    .collect();
                let gone: Vec<String> = self
                    .index
                    .namespaces()
                    .map(|n| n.name.clone())
                    .filter(|n| !keep.contains(n))
                    .collect();
                for name in gone {
                    self.namespace_delete(&name);
                }
                for ns in objects {
                    self.namespace_upsert(ns);
                }
                self.listed(Kind::Namespace);
            }
        }
    }

    fn pod_upsert(&mut self, pod: Pod) {
        if self.index.pod(&pod.key) == Some(&pod) {
            return;
        }
        let old = self.index.upsert_pod(pod.clone());
        if self.ready() {
            self.dirty |= !self
                .compiler
                .pod_changed(&self.index, old.as_ref(), Some(&pod))
                .is_empty();
        }
    }

    fn pod_delete(&mut self, key: &ObjectKey) {
        if let Some(old) = self.index.remove_pod(key)
            && self.ready()
        {
            self.dirty |= !self
                .compiler
                .pod_changed(&self.index, Some(&old), None)
                .is_empty();
        }
    }

    fn pods(&mut self, change: Change<Pod, ObjectKey>) {
        match change {
            Change::Applied(pod) => self.pod_upsert(pod),
            Change::Deleted(key) => self.pod_delete(&key),
            Change::Relisted(Listing { objects, invalid }) => {
                let mut all: BTreeMap<ObjectKey, Pod> =
                    objects.into_iter().map(|p| (p.key.clone(), p)).collect();
                let invalid: BTreeSet<ObjectKey> = invalid.into_iter().collect();
                let gone: Vec<ObjectKey> = self
                    .index
                    .pods()
                    .map(|p| p.key.clone())
                    .filter(|k| !all.contains_key(k) && !invalid.contains(k))
                    .collect();
                for key in gone {
                    self.pod_delete(&key);
                }
                while let Some((_, pod)) = all.pop_first() {
                    self.pod_upsert(pod);
                }
                self.listed(Kind::Pod);
            }
        }
    }

    fn policy_upsert(&mut self, policy: Policy) {
        if self.index.policy(&policy.key) == Some(&policy) {
            return;
        }
        let key = policy.key.clone();
        self.index.upsert_policy(policy);
        if self.ready() {
            self.dirty |= !self.compiler.policy_changed(&self.index, &key).is_empty();
        }
    }

    fn policy_delete(&mut self, key: &ObjectKey) {
        if self.index.remove_policy(key).is_some() && self.ready() {
            self.dirty |= !self.compiler.policy_changed(&self.index, key).is_empty();
        }
    }

    fn policies(&mut self, change: Change<Policy, ObjectKey>) {
        match change {
            Change::Applied(p) => self.policy_upsert(p),
            Change::Deleted(key) => self.policy_delete(&key),
            Change::Relisted(Listing { objects, invalid }) => {
                let keep: BTreeSet<ObjectKey> = objects
                    .iter()
                    .map(|p| p.key.clone())
                    .chain(invalid)
                    .collect();
                let gone: Vec<ObjectKey> = self
                    .index
                    .policies()
                    .map(|p| p.key.clone())
                    .filter(|k| !keep.contains(k))
                    .collect();
                for key in gone {
                    self.policy_delete(&key);
                }
                for p in objects {
                    self.policy_upsert(p);
                }
                self.listed(Kind::Policy);
            }
        }
    }

    /// Cluster policies select pods across namespaces and their peers reach anywhere: a
    /// change recompiles the endpoints in scope (with the NetworkPolicy resolutions kept).
    /// They are few and change rarely; pod and namespace changes go through the incremental
    /// paths.
    fn cluster_changed(&mut self) {
        if self.ready() {
            self.dirty |= !self
                .compiler
                .cluster_policies_changed(&self.index)
                .is_empty();
        }
    }

    fn cluster_policies(&mut self, change: Change<ClusterPolicy, ClusterPolicyKey>) {
        let changed = fold_change(
            &mut self.index,
            change,
            |p| p.key.clone(),
            |index| index.cluster_policies().map(|p| p.key.clone()).collect(),
            |index, p| {
                let fresh = index.cluster_policy(&p.key) != Some(&p);
                if fresh {
                    index.upsert_cluster_policy(p);
                }
                fresh
            },
            |index, key| index.remove_cluster_policy(key).is_some(),
        );
        if changed {
            self.cluster_changed();
        }
    }

    fn nodes(&mut self, change: Change<Node, String>) {
        let changed = fold_change(
            &mut self.index,
            change,
            |n| n.name.clone(),
            |index| index.nodes().map(|n| n.name.clone()).collect(),
            |index, n| {
                let fresh = index.node(&n.name) != Some(&n);
                if fresh {
                    index.upsert_node(n);
                }
                fresh
            },
            |index, name| index.remove_node(name).is_some(),
        );
        // Only `nodes` peers read Nodes.
        let used = self.index.cluster_policies().any(|p| {
            p.egress
                .iter()
                .flat_map(|r| &r.peers)
                .any(|peer| matches!(peer, crate::policy::model::ClusterPeer::Nodes(_)))
        });
        if changed && used {
            self.cluster_changed();
        }
    }
}

/// Folds one [`Change`] of a keyed kind into the index: an upsert, a delete, or a relist that
/// removes what it no longer lists (an invalid object is listed by key: its last valid version
/// stays). Whether anything changed.
fn fold_change<T, K: Ord>(
    index: &mut ClusterIndex,
    change: Change<T, K>,
    key_of: impl Fn(&T) -> K,
    keys: impl Fn(&ClusterIndex) -> Vec<K>,
    upsert: impl Fn(&mut ClusterIndex, T) -> bool,
    remove: impl Fn(&mut ClusterIndex, &K) -> bool,
) -> bool {
    match change {
        Change::Applied(t) => upsert(index, t),
        Change::Deleted(key) => remove(index, &key),
        Change::Relisted(Listing { objects, invalid }) => {
            let keep: BTreeSet<K> = objects.iter().map(&key_of).chain(invalid).collect();
            let mut changed = false;
            for key in keys(index).into_iter().filter(|k| !keep.contains(k)) {
                changed |= remove(index, &key);
            }
            for t in objects {
                changed |= upsert(index, t);
            }
            changed
        }
    }
}
