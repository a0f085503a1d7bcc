//! What each source asks to enforce: the two [`StateSource`]s of the event loop.
//!
//! - [`FolderState`] (`nftpol run`): the manifest folder, read again whole after every burst
//!   of file changes. Input that does not load keeps the last good state enforced.
//! - [`ApiState`] (`nftpol daemon`): the Kubernetes API, folded update by update into the
//!   [`Reconciler`]. Nothing is enforced before every kind has been listed once, so the
//!   previous table stays in force across a restart until the new state is complete; after
//!   that, only a burst that changed the ruleset is submitted.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;

use super::event_loop::{State, StateSource};
use super::reconcile::Reconciler;
use crate::dataplane::ruleset::known_pod_addresses;
use crate::dataplane::{Options, Ruleset};
use crate::observe::metrics::Metrics;
use crate::policy::compile::{NodePlan, Scope, cluster_policy_ties, compile};
use crate::policy::index::ClusterIndex;
use crate::policy::model::ClusterPolicyKey;
use crate::source::{Change, Event, Update, manifest};

/// Warns once per pair of cluster policies of one tier and priority that select a common
/// pod (the API leaves their order undefined; nftpol orders them by name).
#[derive(Debug, Default)]
struct TieWarnings(BTreeSet<(ClusterPolicyKey, ClusterPolicyKey)>);

impl TieWarnings {
    fn check(&mut self, index: &ClusterIndex, plan: &NodePlan) {
        if index.cluster_policy_count() < 2 {
            return;
        }
        for (a, b) in cluster_policy_ties(index, plan) {
            if !self.0.contains(&(a.clone(), b.clone())) {
                tracing::warn!(
                    "{a} and {b} have the same tier and priority and select a common pod: the API leaves their order undefined; nftpol evaluates them by name"
                );
                self.0.insert((a, b));
            }
        }
    }
}

/// A folder of manifests, enforced for one node.
pub struct FolderState {
    paths: [PathBuf; 1],
    node: String,
    options: Options,
    /// `--pod-cidr`, for `--default-deny-unknown`.
    pod_cidrs: Vec<IpNet>,
    metrics: Metrics,
    /// What flow log lines are resolved against: the last state read from the folder.
    plan: Arc<NodePlan>,
    index: ClusterIndex,
    ties: TieWarnings,
}

impl FolderState {
    pub fn new(
        folder: PathBuf,
        node: String,
        options: Options,
        pod_cidrs: Vec<IpNet>,
        metrics: Metrics,
    ) -> Self {
        Self {
            paths: [folder],
            node,
            options,
            pod_cidrs,
            metrics,
            plan: Arc::default(),
            index: ClusterIndex::default(),
            ties: TieWarnings::default(),
        }
    }

    /// Reads the folder and compiles what it asks for this node.
    fn load(&mut self) -> anyhow::Result<State> {
        let folder = self.paths[0].display();
        // Fingerprint first: if the files change while we read them, we report the older
        // digest and the watcher's next event brings us to the newer one, never the other way
        // round.
        let fingerprint = manifest::fingerprint(&self.paths)
            .with_context(|| format!("fingerprinting {folder}"))?;
        let loaded = manifest::load(&self.paths)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        for s in &loaded.invalid {
            tracing::error!("invalid policy skipped (not enforced): {s}");
        }
        let index = ClusterIndex::from_state(&loaded.state);
        let plan = compile(&index, &Scope::Node(self.node.clone()));
        self.ties.check(&index, &plan);
        for (reason, n) in plan.skipped_counts() {
            tracing::info!(reason = reason.as_str(), pods = n, "pods not enforced");
        }
        self.metrics.observe_plan(&plan);
        let stats = plan.stats();
        tracing::info!(
            endpoints = stats.endpoints,
            isolated_ingress = stats.isolated_ingress,
            isolated_egress = stats.isolated_egress,
            policies = stats.policies,
            "compiled"
        );
        let mut ruleset = Ruleset::build(&plan, self.options);
        ruleset.guard_unknown(&self.pod_cidrs, known_pod_addresses(&loaded.state.pods));
        self.plan = Arc::new(plan);
        self.index = index;
        Ok(State {
            fingerprint,
            ruleset,
            plan: Some(self.plan.clone()),
        })
    }
}

impl StateSource for FolderState {
    /// Nothing to fold in: the folder is read whole when the burst settles.
    fn apply(&mut self, _event: Event) {}

    fn settle(&mut self, _nothing_applied: bool) -> Option<State> {
        self.load()
            .inspect_err(|e| {
                tracing::error!("manifests not usable, keeping the last good state enforced: {e:#}")
            })
            .ok()
    }

    fn view(&self) -> (&NodePlan, &ClusterIndex) {
        (&self.plan, &self.index)
    }
}

/// What `--default-deny-unknown` depends on besides the plan: the pod CIDRs and the known
/// addresses inside them (a pod anywhere in the cluster can change them). `None` when off.
type Guard = Option<(Vec<IpNet>, BTreeSet<IpAddr>)>;

/// The cluster as the Kubernetes API reports it, enforced for one node.
pub struct ApiState {
    reconciler: Reconciler,
    options: Options,
    /// `--pod-cidr`; empty: the Node's spec.podCIDRs.
    pod_cidrs: Vec<IpNet>,
    metrics: Metrics,
    /// The guard of the last submitted ruleset.
    last_guard: Guard,
    /// Whether the burst held a relist.
    relisted: bool,
    /// Cluster policies and Nodes have been listed once. The reconciler is ready without
    /// them; the daemon is not: enforcing before an Admin tier Deny is known would open, for a
    /// moment, what it closes (the source lists them as empty while their CRDs are absent).
    listed_cluster_policies: bool,
    listed_nodes: bool,
    after_relist: fn(),
    ties: TieWarnings,
}

impl ApiState {
    pub fn new(node: &str, options: Options, pod_cidrs: Vec<IpNet>, metrics: Metrics) -> Self {
        Self {
            reconciler: Reconciler::new(node),
            options,
            pod_cidrs,
            metrics,
            last_guard: None,
            relisted: false,
            listed_cluster_policies: false,
            listed_nodes: false,
            after_relist: || {},
            ties: TieWarnings::default(),
        }
    }

    /// Runs `hook` after each burst that held a relist, which frees a lot of memory at once.
    pub fn after_relist(mut self, hook: fn()) -> Self {
        self.after_relist = hook;
        self
    }

    fn guard(&self) -> Guard {
        if !self.options.default_deny_unknown {
            return None;
        }
        let cidrs = if self.pod_cidrs.is_empty() {
            self.reconciler.pod_cidrs().to_vec()
        } else {
            self.pod_cidrs.clone()
        };
        let mut known = known_pod_addresses(self.reconciler.index().pods());
        known.retain(|ip| cidrs.iter().any(|c| c.contains(ip)));
        Some((cidrs, known))
    }

    /// The state to enforce for the current plan and the last guard.
    fn state(&self) -> State {
        let r = &self.reconciler;
        self.metrics.observe_plan(r.plan());
        let mut ruleset = Ruleset::build(r.plan(), self.options);
        if let Some((cidrs, known)) = &self.last_guard {
            ruleset.guard_unknown(cidrs, known.iter().copied());
        }
        let s = r.plan().stats();
        State {
            ruleset,
            fingerprint: format!(
                "api:{}pods/{}policies:{}endpoints/{}isolated",
                r.index().pod_count(),
                r.index().policy_count(),
                s.endpoints,
                r.plan().isolated().count()
            ),
            plan: self.options.strict.then(|| Arc::new(r.plan().clone())),
        }
    }
}

impl StateSource for ApiState {
    fn apply(&mut self, event: Event) {
        let Event::Update(u) = event else { return };
        self.metrics.observe_update(&u);
        self.relisted |= matches!(
            &u,
            Update::Namespace(Change::Relisted(_))
                | Update::Pod(Change::Relisted(_))
                | Update::Policy(Change::Relisted(_))
                | Update::Node(Change::Relisted(_))
        );
        self.listed_cluster_policies |= matches!(&u, Update::ClusterPolicy(Change::Relisted(_)));
        self.listed_nodes |= matches!(&u, Update::Node(Change::Relisted(_)));
        self.reconciler.apply(u);
    }

    fn ready(&self) -> bool {
        self.reconciler.ready() && self.listed_cluster_policies && self.listed_nodes
    }

    fn settle(&mut self, nothing_applied: bool) -> Option<State> {
        let mut out = None;
        if self.ready() {
            let guard = self.guard();
            let dirty = self.reconciler.take_dirty() || guard != self.last_guard;
            if dirty || nothing_applied {
                self.last_guard = guard;
                if dirty {
                    self.ties
                        .check(self.reconciler.index(), self.reconciler.plan());
                }
                out = Some(self.state());
            }
        }
        if std::mem::take(&mut self.relisted) {
            (self.after_relist)();
        }
        out
    }

    fn resync(&mut self) -> Option<State> {
        let fixed = self.reconciler.full_resync();
        if fixed == 0 {
            return None;
        }
        tracing::warn!(endpoints = fixed, "full resync fixed endpoints");
        Some(self.state())
    }

    fn view(&self) -> (&NodePlan, &ClusterIndex) {
        (self.reconciler.plan(), self.reconciler.index())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::policy::model::ClusterState;

    fn pod(name: &str, ip: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        })
    }

    fn deny_all() -> serde_json::Value {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "default"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        })
    }

    fn cluster(objects: Vec<serde_json::Value>) -> ClusterState {
        manifest::load_values("cluster", objects)
            .expect("the cluster loads")
            .state
    }

    fn relist(s: &mut ApiState, c: &ClusterState) {
        s.apply(Event::Update(Update::Namespace(Change::Relisted(
            c.namespaces.clone().into(),
        ))));
        s.apply(Event::Update(Update::Pod(Change::Relisted(
            c.pods.clone().into(),
        ))));
        s.apply(Event::Update(Update::Policy(Change::Relisted(
            c.policies.clone().into(),
        ))));
        s.apply(Event::Update(Update::ClusterPolicy(Change::Relisted(
            c.cluster_policies.clone().into(),
        ))));
        s.apply(Event::Update(Update::Node(Change::Relisted(
            c.nodes.clone().into(),
        ))));
    }

    static RELISTS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn the_api_state_waits_for_every_kind_then_submits_what_changed() {
        let mut s = ApiState::new("node-1", Options::default(), vec![], Metrics::new())
            .after_relist(|| {
                RELISTS.fetch_add(1, Ordering::Relaxed);
            });
        let c = cluster(vec![pod("a", "10.0.0.1"), deny_all()]);
        s.apply(Event::Update(Update::Pod(Change::Relisted(
            c.pods.clone().into(),
        ))));
        assert!(!s.ready());
        assert!(s.settle(true).is_none());
        assert_eq!(RELISTS.load(Ordering::Relaxed), 1);
        relist(&mut s, &c);
        assert!(s.ready());
        let first = s.settle(true).expect("ready: the first state");
        assert_eq!(
            first.fingerprint,
            "api:1pods/1policies:1endpoints/1isolated"
        );
        // Once per burst, however many kinds were relisted in it.
        assert_eq!(RELISTS.load(Ordering::Relaxed), 2);
        // Nothing changed: nothing to submit, unless nothing was applied yet.
        relist(&mut s, &c);
        assert!(s.settle(false).is_none());
        assert!(s.settle(true).is_some());
        let more = cluster(vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.2"), deny_all()]);
        let b = more.pods[1].clone();
        s.apply(Event::Update(Update::Pod(Change::Applied(b))));
        let next = s.settle(false).expect("a pod came");
        assert_eq!(next.fingerprint, "api:2pods/1policies:2endpoints/2isolated");
        assert_eq!(s.view().0.endpoints.len(), 2);
        assert!(s.resync().is_none(), "the incremental plan is right");
    }

    /// A restart must not open, even for a moment, what an Admin tier Deny closes: nothing is
    /// enforced before the cluster policies (listed as empty while their CRDs are absent) and
    /// the Nodes of `nodes` peers are listed too.
    #[test]
    fn the_api_state_waits_for_cluster_policies_and_nodes() {
        let mut s = ApiState::new("node-1", Options::default(), vec![], Metrics::new());
        let c = cluster(vec![pod("a", "10.0.0.1")]);
        s.apply(Event::Update(Update::Namespace(Change::Relisted(
            c.namespaces.clone().into(),
        ))));
        s.apply(Event::Update(Update::Pod(Change::Relisted(
            c.pods.clone().into(),
        ))));
        s.apply(Event::Update(Update::Policy(Change::Relisted(
            vec![].into(),
        ))));
        assert!(!s.ready());
        assert!(s.settle(true).is_none());
        s.apply(Event::Update(Update::ClusterPolicy(Change::Relisted(
            vec![].into(),
        ))));
        assert!(!s.ready(), "Nodes not listed yet");
        s.apply(Event::Update(Update::Node(Change::Relisted(vec![].into()))));
        assert!(s.ready());
        assert!(s.settle(true).is_some());
    }

    /// A folder under the temporary directory, removed on drop.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("nftpol-state-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the folder");
            Folder(dir)
        }
        fn write(&self, file: &str, value: &serde_json::Value) {
            std::fs::write(self.0.join(file), value.to_string()).expect("write a manifest");
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_folder_state_keeps_the_last_good_state_when_the_folder_breaks() {
        let folder = Folder::new("broken");
        folder.write("a.json", &pod("a", "10.0.0.1"));
        let mut s = FolderState::new(
            folder.0.clone(),
            "node-1".into(),
            Options::default(),
            vec![],
            Metrics::new(),
        );
        let good = s.settle(true).expect("the folder loads");
        assert_eq!(
            good.fingerprint,
            manifest::fingerprint(std::slice::from_ref(&folder.0)).expect("fingerprint")
        );
        assert!(good.plan.is_some_and(|p| p.endpoints.len() == 1));
        std::fs::write(folder.0.join("b.json"), "{").expect("write a broken manifest");
        s.apply(Event::Reload);
        assert!(s.settle(false).is_none());
        assert_eq!(
            s.view().0.endpoints.len(),
            1,
            "flow logs keep the last good plan"
        );
    }
}
