//! Sources of cluster state, all reporting [`Event`]s of one shape into a [`Sink`] (the
//! engine's event channel): the Kubernetes API ([`kube`]) reports [`Update`]s, in the model's
//! types, that the [`crate::engine::reconcile::Reconciler`] applies to the index; the manifest
//! folder of `nftpol run` ([`files`] watches it, [`manifest`] reads it) reports that it changed
//! and is read again whole.

pub mod cluster_policy;
pub mod files;
pub mod kube;
pub mod live;
pub mod manifest;

use std::sync::mpsc::Sender;

use ipnet::IpNet;

use crate::policy::model::{
    ClusterPolicy, ClusterPolicyKey, Namespace, Node, ObjectKey, Pod, Policy,
};

/// What a source reports to the engine's event loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Objects changed (the Kubernetes API): fold them into the index.
    Update(Update),
    /// The manifest folder changed, or its watcher failed: read it again, whole.
    Reload,
    /// A source's watchers ended for good (they retry forever otherwise: a panic): the state
    /// no longer follows the cluster.
    Stopped(&'static str),
}

/// What happened to the objects of one kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T, K> {
    /// Created or modified.
    Applied(T),
    Deleted(K),
    /// A full (re)list: exactly these objects exist now. Objects missing from it were deleted
    /// while nobody watched (an API outage, a 410 Gone).
    Relisted(Listing<T, K>),
}

/// What a full list holds. An object whose current version does not convert is listed by its
/// key only: it still exists, so its last valid version stays in force (as after a watch
/// update that does not convert) until the object is fixed or deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing<T, K> {
    pub objects: Vec<T>,
    /// Present, but their current versions do not convert.
    pub invalid: Vec<K>,
}

impl<T, K> From<Vec<T>> for Listing<T, K> {
    /// A listing in which every object converted.
    fn from(objects: Vec<T>) -> Self {
        Self {
            objects,
            invalid: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Namespace(Change<Namespace, String>),
    Pod(Change<Pod, ObjectKey>),
    Policy(Change<Policy, ObjectKey>),
    /// ClusterNetworkPolicies and the v1alpha1 AdminNetworkPolicy and
    /// BaselineAdminNetworkPolicy, converted to one model. Optional: the reconciler is ready
    /// without them (their CRDs may not be installed).
    ClusterPolicy(Change<ClusterPolicy, ClusterPolicyKey>),
    /// Nodes, for ClusterNetworkPolicy `nodes` peers (keyed by name). Optional like the above.
    Node(Change<Node, String>),
    /// The own Node's pod CIDRs (spec.podCIDRs), for `--default-deny-unknown`.
    NodePodCidrs(Vec<IpNet>),
    /// A watch failed; the source retries with backoff by itself.
    WatchError {
        kind: &'static str,
        error: String,
    },
}

/// Where a source's events go: a channel of the caller's event type.
pub struct Sink<E> {
    tx: Sender<E>,
    wrap: fn(Event) -> E,
}

impl<E> Clone for Sink<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            wrap: self.wrap,
        }
    }
}

impl<E> Sink<E> {
    pub fn new(tx: Sender<E>, wrap: fn(Event) -> E) -> Self {
        Self { tx, wrap }
    }

    /// False when the receiver is gone (shutting down).
    pub fn send(&self, event: Event) -> bool {
        self.tx.send((self.wrap)(event)).is_ok()
    }
}
