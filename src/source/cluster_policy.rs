//! The cluster administrator's policy kinds of `policy.networking.k8s.io` (ClusterNetworkPolicy,
//! and the v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy), watched only while
//! their CustomResourceDefinitions serve a version nftpol reads.
//!
//! Those CRDs are optional: a cluster without them runs on NetworkPolicy alone. One watch per
//! CRD (by name, so that a cluster's other CRDs, some of them megabytes of schema, are never
//! read) says whether the kind is served and at which version; the kind's own watch starts
//! when its CRD is established, moves when the preferred version changes (v1beta1 over
//! v1alpha2) and stops when the CRD goes, which deletes every object of the kind. Each change
//! is logged once.
//!
//! The three kinds are one [`Update`] kind in the model, so that the reconciler sees one
//! listing: a [`Merger`] keeps what each watch last reported and reports a relist of any of
//! them (or a CRD's removal) as a relist of the union. The first one waits until every CRD
//! watch has listed and every served kind has been listed once, so that readiness means the
//! same as for the other kinds. Objects are converted as the other watchers do
//! ([`super::kube::Relister`]: an object that stops converting keeps its last valid version).

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::TypeMeta;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::mpsc;

use super::kube::{namespace_key, pump_to, watch};
use super::{Change, Listing, Sink, Update};
use crate::policy::convert::{self, ANP_VERSION, CNP_VERSIONS, InvalidObject};
use crate::policy::model::{ClusterPolicy, ClusterPolicyKey, ClusterPolicyKind};

pub const GROUP: &str = "policy.networking.k8s.io";

/// One of the policy kinds of [`GROUP`].
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterKind {
    pub model: ClusterPolicyKind,
    pub kind: &'static str,
    pub plural: &'static str,
    /// The versions nftpol reads, most preferred first.
    pub versions: &'static [&'static str],
}

impl ClusterKind {
    /// The name of its CustomResourceDefinition.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural)
    }

    fn resource(&self, version: &str) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: version.into(),
            api_version: format!("{GROUP}/{version}"),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// The kinds watched, in the order of [`Merger`]'s indexes.
pub static KINDS: [ClusterKind; 3] = [
    // v1beta1 has the shape of v1alpha2; a CRD that serves both is read at v1beta1.
    ClusterKind {
        model: ClusterPolicyKind::ClusterNetworkPolicy,
        kind: "ClusterNetworkPolicy",
        plural: "clusternetworkpolicies",
        versions: &CNP_VERSIONS,
    },
    ClusterKind {
        model: ClusterPolicyKind::AdminNetworkPolicy,
        kind: "AdminNetworkPolicy",
        plural: "adminnetworkpolicies",
        versions: &[ANP_VERSION],
    },
    ClusterKind {
        model: ClusterPolicyKind::BaselineAdminNetworkPolicy,
        kind: "BaselineAdminNetworkPolicy",
        plural: "baselineadminnetworkpolicies",
        versions: &[ANP_VERSION],
    },
];

/// What a kind's CRD says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Crd {
    /// No CRD of that name.
    Absent,
    /// Created, not established yet: nothing is served.
    Pending,
    /// Established, but it serves none of the versions nftpol reads (these it does).
    Unsupported(Vec<String>),
    /// Established and serving this version, the most preferred of those nftpol reads.
    Served(&'static str),
}

impl Crd {
    /// The state of `kind`'s CRD `crd` (a CustomResourceDefinition as JSON).
    pub fn of(kind: &ClusterKind, crd: &Value) -> Crd {
        let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        });
        if !established {
            return Crd::Pending;
        }
        let served: Vec<String> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"] == true)
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        match kind
            .versions
            .iter()
            .find(|v| served.iter().any(|s| s == *v))
        {
            Some(v) => Crd::Served(v),
            None => Crd::Unsupported(served),
        }
    }

    fn version(&self) -> Option<&'static str> {
        match self {
            Crd::Served(v) => Some(v),
            _ => None,
        }
    }

    /// Logs the move from `before` (`None`: the first listing) to `self`.
    fn log(&self, kind: &ClusterKind, before: Option<&Crd>) {
        let (kind, crd) = (kind.kind, kind.crd_name());
        match (before, self) {
            (_, Crd::Served(v)) => {
                tracing::info!(kind, crd, "served as {GROUP}/{v}: watching it")
            }
            (None | Some(Crd::Absent), Crd::Absent) => tracing::info!(
                kind,
                crd,
                "CRD not installed: running without it; watching for it to appear"
            ),
            (Some(Crd::Served(_)), Crd::Absent) => tracing::warn!(
                kind,
                crd,
                "CRD removed (with every object of the kind): no longer enforced"
            ),
            (_, Crd::Absent) => tracing::info!(kind, crd, "CRD removed"),
            (_, Crd::Pending) => {
                tracing::info!(kind, crd, "CRD not established yet: waiting for it")
            }
            (_, Crd::Unsupported(served)) => tracing::warn!(
                kind,
                crd,
                ?served,
                "the CRD serves none of the versions nftpol reads: not enforced"
            ),
        }
    }
}

/// What is known of one kind.
#[derive(Debug)]
struct Known<T, K> {
    /// Listed once: its CRD is not served, or its watch has listed.
    listed: bool,
    objects: BTreeMap<K, T>,
    /// Present, but their current versions do not convert.
    invalid: BTreeSet<K>,
}

/// Merges the changes of several watches into the changes of one kind of update (see the
/// module's documentation).
#[derive(Debug)]
pub struct Merger<T, K> {
    kinds: Vec<Known<T, K>>,
    key_of: fn(&T) -> K,
    /// The union has been reported once: from then on every change is.
    started: bool,
}

impl<T: Clone, K: Ord + Clone> Merger<T, K> {
    pub fn new(kinds: usize, key_of: fn(&T) -> K) -> Self {
        Self {
            kinds: (0..kinds)
                .map(|_| Known {
                    listed: false,
                    objects: BTreeMap::new(),
                    invalid: BTreeSet::new(),
                })
                .collect(),
            key_of,
            started: false,
        }
    }

    /// Kind `kind` is not served (no CRD, or it was removed): it has no objects.
    pub fn absent(&mut self, kind: usize) -> Option<Change<T, K>> {
        let k = &mut self.kinds[kind];
        k.objects.clear();
        k.invalid.clear();
        k.listed = true;
        self.relisted()
    }

    /// A change reported by kind `kind`'s watch; returns the change to report, if any.
    pub fn feed(&mut self, kind: usize, change: Change<T, K>) -> Option<Change<T, K>> {
        let k = &mut self.kinds[kind];
        match change {
            Change::Applied(obj) => {
                let key = (self.key_of)(&obj);
                k.invalid.remove(&key);
                k.objects.insert(key, obj.clone());
                self.started.then_some(Change::Applied(obj))
            }
            Change::Deleted(key) => {
                k.objects.remove(&key);
                k.invalid.remove(&key);
                self.started.then_some(Change::Deleted(key))
            }
            Change::Relisted(Listing { objects, invalid }) => {
                k.objects = objects
                    .into_iter()
                    .map(|o| ((self.key_of)(&o), o))
                    .collect();
                k.invalid = invalid.into_iter().collect();
                k.listed = true;
                self.relisted()
            }
        }
    }

    /// The union, once every kind has been listed.
    fn relisted(&mut self) -> Option<Change<T, K>> {
        if !self.started && !self.kinds.iter().all(|k| k.listed) {
            return None;
        }
        self.started = true;
        Some(Change::Relisted(Listing {
            objects: self
                .kinds
                .iter()
                .flat_map(|k| k.objects.values().cloned())
                .collect(),
            invalid: self
                .kinds
                .iter()
                .flat_map(|k| k.invalid.iter().cloned())
                .collect(),
        }))
    }
}

/// A conversion with warnings, or why the object does not convert.
pub type Converted<T> = Result<(T, Vec<InvalidObject>), InvalidObject>;

/// How the objects of these kinds become updates of the model (generic so that the merging
/// is tested on plain values).
pub struct Spec<T, K> {
    /// The key of the object of `kind` named so.
    pub key: fn(&'static ClusterKind, String) -> K,
    pub key_of: fn(&T) -> K,
    /// Converts an object (with its apiVersion and kind), with warnings.
    pub convert: fn(&Value) -> Converted<T>,
    pub wrap: fn(Change<T, K>) -> Update,
}

/// The model's cluster policies.
pub const SPEC: Spec<ClusterPolicy, ClusterPolicyKey> = Spec {
    key: |kind, name| ClusterPolicyKey::new(kind.model, name),
    key_of: |p| p.key.clone(),
    convert: convert::cluster_policy_with_warnings,
    wrap: Update::ClusterPolicy,
};

enum Msg<T, K> {
    Crd(usize, Crd),
    /// From the watch of generation `gen` of kind `kind`: older generations are dropped.
    Change {
        kind: usize,
        generation: u64,
        change: Change<T, K>,
    },
}

/// Reports the state of `kind`'s CRD after each listing and each change of it.
async fn watch_crd<T, K, E>(
    client: Client,
    kind: usize,
    tx: mpsc::UnboundedSender<Msg<T, K>>,
    sink: Sink<E>,
) {
    use futures::StreamExt;
    let ck = &KINDS[kind];
    let crds = ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={}", ck.crd_name()));
    let stream = watch(Api::<DynamicObject>::all_with(client, &crds), config);
    let mut stream = std::pin::pin!(stream);
    let mut listing = Crd::Absent;
    let state = |o: DynamicObject| match serde_json::to_value(o) {
        Ok(v) => Crd::of(ck, &v),
        Err(_) => Crd::Pending,
    };
    while let Some(item) = stream.next().await {
        let crd = match item {
            Ok(Event::Init) => {
                listing = Crd::Absent;
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listing = state(o);
                continue;
            }
            Ok(Event::InitDone) => listing.clone(),
            Ok(Event::Apply(o)) => state(o),
            Ok(Event::Delete(_)) => Crd::Absent,
            Err(e) => {
                tracing::warn!(kind = "CustomResourceDefinition", crd = %ck.crd_name(), "watch failed, retrying: {e}");
                let update = Update::WatchError {
                    kind: "CustomResourceDefinition",
                    error: e.to_string(),
                };
                if !sink.send(super::Event::Update(update)) {
                    return;
                }
                continue;
            }
        };
        if tx.send(Msg::Crd(kind, crd)).is_err() {
            return;
        }
    }
}

/// What the loop must do after a CRD's state changed.
#[derive(Debug, PartialEq)]
pub struct Step<T, K> {
    /// Stop the kind's running watch.
    pub stop: bool,
    /// Start a watch of the kind at this version, as this generation.
    pub start: Option<(&'static str, u64)>,
    pub report: Option<Change<T, K>>,
}

/// The state of the merging loop, apart from its tasks: what each CRD says, which watch runs
/// for each kind, and the [`Merger`].
#[derive(Debug)]
pub struct Kinds<T, K> {
    crds: Vec<Option<Crd>>,
    /// The version and generation of each kind's running watch.
    watching: Vec<Option<(&'static str, u64)>>,
    generation: u64,
    merger: Merger<T, K>,
}

impl<T: Clone, K: Ord + Clone> Kinds<T, K> {
    pub fn new(key_of: fn(&T) -> K) -> Self {
        Self {
            crds: vec![None; KINDS.len()],
            watching: vec![None; KINDS.len()],
            generation: 0,
            merger: Merger::new(KINDS.len(), key_of),
        }
    }

    /// Kind `kind`'s CRD is in state `crd` (after a listing or a change of it).
    pub fn crd(&mut self, kind: usize, crd: Crd) -> Step<T, K> {
        let mut step = Step {
            stop: false,
            start: None,
            report: None,
        };
        if self.crds[kind].as_ref() == Some(&crd) {
            return step;
        }
        crd.log(&KINDS[kind], self.crds[kind].as_ref());
        let version = crd.version();
        self.crds[kind] = Some(crd);
        let running = self.watching[kind].map(|(v, _)| v);
        if version.is_some() && running == version {
            return step;
        }
        step.stop = self.watching[kind].take().is_some();
        match version {
            Some(version) => {
                self.generation += 1;
                self.watching[kind] = Some((version, self.generation));
                step.start = Some((version, self.generation));
            }
            // Not served: no objects, which the first listing must say too.
            None => step.report = self.merger.absent(kind),
        }
        step
    }

    /// A change from the watch of generation `generation` of kind `kind`; those of a watch
    /// stopped since are dropped.
    pub fn change(
        &mut self,
        kind: usize,
        generation: u64,
        change: Change<T, K>,
    ) -> Option<Change<T, K>> {
        if self.watching[kind].map(|(_, g)| g) != Some(generation) {
            return None;
        }
        self.merger.feed(kind, change)
    }
}

/// Watches the kinds of [`KINDS`] while their CRDs serve them, until the receiving side hangs
/// up.
pub async fn run<T, K, E>(client: Client, spec: Spec<T, K>, sink: Sink<E>)
where
    T: Clone + Send + 'static,
    K: Ord + Clone + Send + 'static,
    E: Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let crd_watches: Vec<_> = (0..KINDS.len())
        .map(|k| tokio::spawn(watch_crd(client.clone(), k, tx.clone(), sink.clone())))
        .collect();
    let mut kinds = Kinds::new(spec.key_of);
    let mut tasks: Vec<Option<tokio::task::JoinHandle<()>>> =
        (0..KINDS.len()).map(|_| None).collect();
    while let Some(msg) = rx.recv().await {
        let report = match msg {
            Msg::Crd(kind, crd) => {
                let step = kinds.crd(kind, crd);
                if step.stop
                    && let Some(task) = tasks[kind].take()
                {
                    task.abort();
                }
                if let Some((version, generation)) = step.start {
                    tasks[kind] = Some(tokio::spawn(watch_kind(
                        client.clone(),
                        kind,
                        version,
                        generation,
                        &spec,
                        tx.clone(),
                        sink.clone(),
                    )));
                }
                step.report
            }
            Msg::Change {
                kind,
                generation,
                change,
            } => kinds.change(kind, generation, change),
        };
        if let Some(change) = report
            && !sink.send(super::Event::Update((spec.wrap)(change)))
        {
            break;
        }
    }
    for task in crd_watches.into_iter().chain(tasks.into_iter().flatten()) {
        task.abort();
    }
}

/// The watch of kind `kind` at `version`, reporting to the merging loop.
fn watch_kind<T, K, E>(
    client: Client,
    kind: usize,
    version: &'static str,
    generation: u64,
    spec: &Spec<T, K>,
    tx: mpsc::UnboundedSender<Msg<T, K>>,
    sink: Sink<E>,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    T: Send + 'static,
    K: Ord + Clone + Send + 'static,
    E: Send + 'static,
{
    let ck = &KINDS[kind];
    let resource = ck.resource(version);
    let api = Api::<DynamicObject>::all_with(client, &resource);
    let (key, convert) = (spec.key, spec.convert);
    let types = TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    };
    pump_to(
        ck.kind,
        watch(api, watcher::Config::default()),
        move |meta| namespace_key(meta).map(|name| key(ck, name)),
        move |obj: &DynamicObject| convert(&typed_value(ck, obj, &types)?),
        move |change| {
            tx.send(Msg::Change {
                kind,
                generation,
                change,
            })
            .is_ok()
        },
        sink,
    )
}

/// `obj` as JSON with its apiVersion and kind, which the items of a list may come without.
fn typed_value(
    kind: &ClusterKind,
    obj: &DynamicObject,
    types: &TypeMeta,
) -> Result<Value, InvalidObject> {
    let mut obj = obj.clone();
    obj.types.get_or_insert_with(|| types.clone());
    let name = obj.metadata.name.clone().unwrap_or_default();
    serde_json::to_value(obj).map_err(|e| InvalidObject {
        kind: kind.kind,
        object: name,
        field: String::new(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn crd(versions: &[(&str, bool)], established: bool) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "clusternetworkpolicies.policy.networking.k8s.io"},
            "spec": {"group": GROUP, "names": {"plural": "clusternetworkpolicies"},
                     "versions": versions.iter().map(|(n, s)| json!({"name": n, "served": s}))
                         .collect::<Vec<_>>()},
            "status": {"conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": if established { "True" } else { "False" }},
            ]},
        })
    }

    #[test]
    fn a_crd_is_read_at_the_most_preferred_served_version_once_established() {
        let cnp = &KINDS[0];
        let of = |v: &[(&str, bool)], e| Crd::of(cnp, &crd(v, e));
        assert_eq!(of(&[("v1alpha2", true)], true), Crd::Served("v1alpha2"));
        assert_eq!(
            of(&[("v1alpha2", true), ("v1beta1", true)], true),
            Crd::Served("v1beta1")
        );
        assert_eq!(
            of(&[("v1alpha2", true), ("v1beta1", false)], true),
            Crd::Served("v1alpha2")
        );
        assert_eq!(of(&[("v1alpha2", true)], false), Crd::Pending);
        assert_eq!(
            of(&[("v1", true), ("v1alpha2", false)], true),
            Crd::Unsupported(vec!["v1".into()])
        );
        assert_eq!(Crd::of(cnp, &json!({})), Crd::Pending);
    }

    /// Objects are (key, version); kinds 0 and 1.
    fn merger() -> Merger<(u32, u32), u32> {
        Merger::new(2, |o| o.0)
    }

    fn relisted(objects: Vec<(u32, u32)>, invalid: Vec<u32>) -> Change<(u32, u32), u32> {
        Change::Relisted(Listing { objects, invalid })
    }

    #[test]
    fn nothing_is_reported_before_every_kind_is_listed_then_the_union() {
        let mut m = merger();
        assert_eq!(m.feed(0, relisted(vec![(1, 1)], vec![2])), None);
        assert_eq!(m.feed(0, Change::Applied((3, 1))), None);
        assert_eq!(m.feed(0, Change::Deleted(1)), None);
        assert_eq!(
            m.absent(1),
            Some(relisted(vec![(3, 1)], vec![2])),
            "an absent CRD counts as listed"
        );
        assert_eq!(
            m.feed(1, Change::Applied((10, 1))),
            Some(Change::Applied((10, 1)))
        );
        assert_eq!(m.feed(0, Change::Deleted(2)), Some(Change::Deleted(2)));
    }

    /// A relist of one kind, or its CRD's removal, is a relist of the union: the other kinds'
    /// objects stay, including the invalid ones (their last valid versions stay in force).
    #[test]
    fn one_kind_relisting_or_going_away_leaves_the_others_in_place() {
        let mut m = merger();
        m.feed(0, relisted(vec![(1, 1)], vec![]));
        m.feed(1, relisted(vec![(10, 1)], vec![11]));
        assert_eq!(
            m.feed(0, relisted(vec![(1, 2), (2, 1)], vec![3])),
            Some(relisted(vec![(1, 2), (2, 1), (10, 1)], vec![3, 11]))
        );
        // Fixed: no longer invalid.
        m.feed(1, Change::Applied((11, 2)));
        assert_eq!(m.absent(0), Some(relisted(vec![(10, 1), (11, 2)], vec![])));
        assert_eq!(
            m.feed(1, relisted(vec![], vec![])),
            Some(relisted(vec![], vec![]))
        );
    }

    /// Objects arrive as dynamic objects, those of a list without their type, and convert
    /// under the key their metadata gives (which deletions use).
    #[test]
    fn a_listed_object_without_its_type_converts_under_its_key() {
        for (i, kind) in KINDS.iter().enumerate() {
            let spec = match i {
                0 => json!({"tier": "Admin", "priority": 5,
                            "subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
                1 => json!({"priority": 5, "subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
                _ => json!({"subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
            };
            let name = if i == 2 { "default" } else { "p" };
            let obj: DynamicObject =
                serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
                    .expect("a dynamic object");
            let resource = kind.resource(kind.versions[0]);
            let types = TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            };
            let value = typed_value(kind, &obj, &types).expect("serialises");
            let (policy, warnings) = (SPEC.convert)(&value).expect("converts");
            assert!(warnings.is_empty(), "{warnings:?}");
            let key = namespace_key(&obj.metadata).map(|n| (SPEC.key)(kind, n));
            assert_eq!(Some((SPEC.key_of)(&policy)), key, "{}", kind.kind);
        }
    }

    fn step(
        stop: bool,
        start: Option<(&'static str, u64)>,
        report: Option<Change<(u32, u32), u32>>,
    ) -> Step<(u32, u32), u32> {
        Step {
            stop,
            start,
            report,
        }
    }

    /// Without any CRD the first listings report an empty union (the daemon is ready without
    /// them); a CRD that appears starts its kind's watch, whose changes count only while it is
    /// the current one; a version change moves the watch; a removal reports the kind empty.
    #[test]
    fn crds_start_move_and_stop_the_watches() {
        let mut k = Kinds::<(u32, u32), u32>::new(|o| o.0);
        assert_eq!(k.crd(0, Crd::Absent), step(false, None, None));
        assert_eq!(k.crd(1, Crd::Pending), step(false, None, None));
        assert_eq!(
            k.crd(2, Crd::Absent),
            step(false, None, Some(relisted(vec![], vec![])))
        );
        // Unchanged: nothing.
        assert_eq!(k.crd(2, Crd::Absent), step(false, None, None));
        assert_eq!(
            k.crd(0, Crd::Served("v1alpha2")),
            step(false, Some(("v1alpha2", 1)), None)
        );
        assert_eq!(
            k.change(0, 1, relisted(vec![(1, 1)], vec![])),
            Some(relisted(vec![(1, 1)], vec![]))
        );
        assert_eq!(
            k.crd(0, Crd::Served("v1beta1")),
            step(true, Some(("v1beta1", 2)), None)
        );
        assert_eq!(k.change(0, 1, Change::Applied((2, 1))), None, "stale watch");
        assert_eq!(
            k.change(0, 2, Change::Applied((2, 1))),
            Some(Change::Applied((2, 1)))
        );
        assert_eq!(
            k.crd(0, Crd::Absent),
            step(true, None, Some(relisted(vec![], vec![])))
        );
        assert_eq!(k.change(0, 2, Change::Deleted(1)), None, "stopped watch");
    }
}
