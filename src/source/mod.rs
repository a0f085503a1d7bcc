//! Sources of cluster state. Each source reports [`Update`]s, in the model's types, that the
//! [`crate::engine::reconcile::Reconciler`] applies to the index: the Kubernetes API ([`kube`]);
//! the manifest files of `nftpol run` ([`manifest`]) reload whole snapshots instead.

pub mod kube;
pub mod manifest;

use ipnet::IpNet;

use crate::policy::model::{Namespace, ObjectKey, Pod, Policy};

/// What happened to the objects of one kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T, K> {
    /// Created or modified.
    Applied(T),
    Deleted(K),
    /// A full (re)list: exactly these objects exist now. Objects missing from it were deleted
    /// while nobody watched (an API outage, a 410 Gone).
    Relisted(Vec<T>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Namespace(Change<Namespace, String>),
    Pod(Change<Pod, ObjectKey>),
    Policy(Change<Policy, ObjectKey>),
    /// The own Node's pod CIDRs (spec.podCIDRs), for `--default-deny-unknown`.
    NodePodCidrs(Vec<IpNet>),
    /// A watch failed; the source retries with backoff by itself.
    WatchError {
        kind: &'static str,
        error: String,
    },
}
