//! The policy compiler: cluster index + node name in, desired enforcement state out. Pure: no I/O.
//!
//! For every pod endpoint on the node (every pod when the scope is the whole cluster, as
//! `simulate` uses it) it decides whether the pod is isolated for ingress and for egress, by
//! which policies, and what traffic the union of their rules allows, as merged, non-overlapping
//! address and port intervals (`intervals::Allowed`). Each rule's own contribution is kept beside
//! the union (provenance) so that `explain`, drop logs and counters can name the policy and rule.
//!
//! [`Compiler`] also keeps what it resolved per policy, so that a change of one pod, namespace or
//! policy recompiles only the endpoints it can affect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::policy::index::ClusterIndex;
use crate::policy::intervals::{AddrSet, Allowed, AllowedBuilder};
use crate::policy::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyKey, ClusterPort, ClusterRule, Direction,
    Namespace, ObjectKey, Peer, Pod, Policy, PortMatch, Protocol, Rule, SkipReason, Tier,
};

/// Which pods are endpoints: those of one node, or all of them (for `simulate` and `explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Node(String),
    Cluster,
}

impl Scope {
    fn includes(&self, pod: &Pod) -> bool {
        match self {
            Scope::Node(node) => pod.node.as_deref() == Some(node.as_str()),
            Scope::Cluster => true,
        }
    }
}

/// What one rule of one policy allows for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleAllow {
    pub policy: ObjectKey,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    pub allowed: Allowed,
}

/// An isolated direction of an endpoint. Endpoints with equal isolations share one
/// ([`Interner`]): the pods of a Deployment usually do, and each can hold the addresses of
/// thousands of peers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Isolation {
    /// The policies that select the pod for this direction, sorted.
    pub policies: Vec<ObjectKey>,
    /// Each rule's contribution, in policy then rule order.
    pub rules: Vec<RuleAllow>,
    /// The union of `rules`, in normal form: what the dataplane programs.
    pub allowed: Allowed,
    /// Some selecting policy asks for its allowed connections to be logged.
    pub log_allowed: bool,
}

impl Isolation {
    /// The rules that allow this connection (empty when the connection is dropped).
    pub fn allowing_rules(
        &self,
        peer: IpAddr,
        protocol: crate::policy::model::Protocol,
        port: u16,
    ) -> impl Iterator<Item = &RuleAllow> {
        self.rules
            .iter()
            .filter(move |r| r.allowed.allows(peer, protocol, port))
    }
}

/// What one ClusterNetworkPolicy rule matches, resolved once for every subject pod: the
/// dataplane programs it as one set per rule, shared by all of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterRuleMatch {
    /// The rule has no `protocols`: it matches every protocol and port (the dataplane looks
    /// its peers up in an address set; otherwise in an `address . protocol . port` set).
    pub all_ports: bool,
    /// The addresses of its peers (for `destinationNamedPort` on ingress, which resolves on
    /// each subject pod).
    pub peers: AddrSet,
    /// Everything it matches that does not depend on the subject pod: peers x protocols, and
    /// on egress named ports resolved on each destination pod.
    pub shared: Allowed,
    /// Ingress `destinationNamedPort` names: resolved on the subject pod itself.
    pub named_ingress: Vec<String>,
    /// Egress `domainNames` of the rule, as written: the rule also matches the addresses
    /// learned from DNS answers for them (kept by the dataplane, never known here).
    pub domains: Vec<String>,
    /// The rule's `protocols` entries with port numbers (those a `domainNames` rule can
    /// have), for matching learned addresses; unused when `all_ports`.
    pub port_ranges: Vec<(Protocol, u16, u16)>,
}

/// One ClusterNetworkPolicy rule as it applies to one endpoint and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierRule {
    pub policy: ClusterPolicyKey,
    pub tier: Tier,
    pub priority: Option<u32>,
    /// Index in the policy's rules for the direction.
    pub rule: usize,
    pub name: Option<String>,
    pub action: Action,
    /// Shared by every subject pod of the rule.
    pub matches: Arc<ClusterRuleMatch>,
    /// Ingress named ports resolved on this endpoint: (protocol, port) matched with `peers`.
    pub own_ports: Vec<(Protocol, u16)>,
}

impl TierRule {
    pub fn matches(&self, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.matches.shared.allows(peer, protocol, port)
            || (self.matches.peers.contains(peer) && self.own_ports.contains(&(protocol, port)))
    }

    /// The rule's name, else `#index`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("#{}", self.rule),
        }
    }
}

/// The ClusterNetworkPolicy rules that apply to one endpoint in one direction, in evaluation
/// order: Admin before NetworkPolicy, Baseline after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierRules {
    pub admin: Vec<TierRule>,
    pub baseline: Vec<TierRule>,
    /// The policies whose subject selects the pod (with or without rules for the direction).
    pub policies: Vec<ClusterPolicyKey>,
}

impl TierRules {
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.baseline.is_empty()
    }

    pub fn tier(&self, tier: Tier) -> &[TierRule] {
        match tier {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        }
    }
}

/// The desired state of one pod endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: ObjectKey,
    pub ips: Vec<IpAddr>,
    /// `None`: not isolated for ingress, everything is allowed in.
    pub ingress: Option<Arc<Isolation>>,
    /// `None`: not isolated for egress, everything is allowed out.
    pub egress: Option<Arc<Isolation>>,
    /// The pod's namespace is in audit mode (`nftpol.io/enforcement: audit`): what its
    /// policies deny is logged and counted, and let through.
    pub audit: bool,
    /// ClusterNetworkPolicy rules for ingress and egress (empty: none selects the pod).
    pub cluster_ingress: TierRules,
    pub cluster_egress: TierRules,
}

impl Endpoint {
    pub fn isolation(&self, direction: Direction) -> Option<&Isolation> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }

    pub fn cluster(&self, direction: Direction) -> &TierRules {
        match direction {
            Direction::Ingress => &self.cluster_ingress,
            Direction::Egress => &self.cluster_egress,
        }
    }

    /// Whether the direction needs a per-pod chain: a NetworkPolicy isolates it, or a
    /// ClusterNetworkPolicy rule applies to it.
    pub fn has_chain(&self, direction: Direction) -> bool {
        self.isolation(direction).is_some() || !self.cluster(direction).is_empty()
    }
}

/// The compiler's output for one scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Every endpoint in scope, isolated or not, sorted by pod.
    pub endpoints: BTreeMap<ObjectKey, Endpoint>,
    /// Pods in scope that take no part in enforcement, and why.
    pub skipped: BTreeMap<ObjectKey, SkipReason>,
}

impl NodePlan {
    pub fn endpoint(&self, pod: &ObjectKey) -> Option<&Endpoint> {
        self.endpoints.get(pod)
    }

    /// Endpoints isolated in at least one direction: the only ones that get chains.
    pub fn isolated(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values().filter(|e| e.is_isolated())
    }

    /// Endpoint that owns this address, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.ips.contains(&ip))
    }

    pub fn skipped_counts(&self) -> BTreeMap<SkipReason, usize> {
        let mut counts = BTreeMap::new();
        for reason in self.skipped.values() {
            *counts.entry(*reason).or_default() += 1;
        }
        counts
    }
}

/// Summary numbers, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlanStats {
    pub endpoints: usize,
    pub isolated_ingress: usize,
    pub isolated_egress: usize,
    pub policies: usize,
    /// Cluster policies of each tier that select an endpoint in scope.
    pub admin_cluster_policies: usize,
    pub baseline_cluster_policies: usize,
}

impl NodePlan {
    pub fn stats(&self) -> PlanStats {
        let mut policies = BTreeSet::new();
        let mut stats = PlanStats {
            endpoints: self.endpoints.len(),
            ..Default::default()
        };
        for e in self.endpoints.values() {
            if let Some(i) = &e.ingress {
                stats.isolated_ingress += 1;
                policies.extend(i.policies.iter());
            }
            if let Some(i) = &e.egress {
                stats.isolated_egress += 1;
                policies.extend(i.policies.iter());
            }
        }
        stats.policies = policies.len();
        let mut tiers: BTreeSet<(Tier, &ClusterPolicyKey)> = BTreeSet::new();
        for e in self.endpoints.values() {
            for r in e
                .cluster_ingress
                .admin
                .iter()
                .chain(&e.cluster_egress.admin)
            {
                tiers.insert((Tier::Admin, &r.policy));
            }
            for r in e
                .cluster_ingress
                .baseline
                .iter()
                .chain(&e.cluster_egress.baseline)
            {
                tiers.insert((Tier::Baseline, &r.policy));
            }
        }
        stats.admin_cluster_policies = tiers.iter().filter(|(t, _)| *t == Tier::Admin).count();
        stats.baseline_cluster_policies = tiers.len() - stats.admin_cluster_policies;
        stats
    }
}

/// Pairs of cluster policies of one tier and priority that select a common pod of the plan:
/// the API leaves their order undefined, nftpol orders them by name (and says so once).
pub fn cluster_policy_ties(
    index: &ClusterIndex,
    plan: &NodePlan,
) -> BTreeSet<(ClusterPolicyKey, ClusterPolicyKey)> {
    let mut out = BTreeSet::new();
    for e in plan.endpoints.values() {
        let selecting: Vec<&ClusterPolicy> = e
            .cluster_ingress
            .policies
            .iter()
            .filter_map(|k| index.cluster_policy(k))
            .collect();
        for (i, a) in selecting.iter().enumerate() {
            for b in &selecting[i + 1..] {
                if a.tier == b.tier && a.priority == b.priority && a.priority.is_some() {
                    out.insert((a.key.clone(), b.key.clone()));
                }
            }
        }
    }
    out
}

/// Compiles the whole scope from scratch.
pub fn compile(index: &ClusterIndex, scope: &Scope) -> NodePlan {
    let mut compiler = Compiler::new(scope.clone());
    compiler.full(index);
    compiler.into_plan()
}

/// A rule's peers, resolved against the index once and shared by every endpoint it applies to.
#[derive(Debug)]
struct ResolvedRule {
    /// `None`: the rule allows every peer (empty or absent `from`/`to`).
    peers: Option<AddrSet>,
    /// For egress rules with named ports: the pods the peers select (named ports are resolved on
    /// each of them) and the ipBlock addresses (pods inside them count too).
    dest_pods: Vec<ObjectKey>,
    blocks: AddrSet,
}

#[derive(Debug)]
struct ResolvedPolicy {
    ingress: Vec<ResolvedRule>,
    egress: Vec<ResolvedRule>,
}

/// Incremental compiler: owns the current plan and per-policy resolutions.
#[derive(Debug)]
pub struct Compiler {
    scope: Scope,
    plan: NodePlan,
    resolved: HashMap<ObjectKey, Arc<ResolvedPolicy>>,
    /// policy -> endpoints it selects, to know what a policy change touches.
    selected_by: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Cluster policy rules resolved against the index: (ingress, egress), one entry per rule.
    cluster_resolved: HashMap<ClusterPolicyKey, Arc<ClusterResolved>>,
    /// Endpoints that some cluster policy selects.
    cluster_users: BTreeSet<ObjectKey>,
    isolations: Interner,
}

/// One shared copy of each distinct [`Isolation`] in the plan. Entries only the interner still
/// holds are dropped once the table has doubled since the last sweep.
#[derive(Debug, Default)]
struct Interner {
    by_hash: HashMap<u64, Vec<Arc<Isolation>>>,
    len: usize,
    swept_at: usize,
}

impl Interner {
    fn intern(&mut self, isolation: Isolation) -> Arc<Isolation> {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let h = HASHER.get_or_init(RandomState::new).hash_one(&isolation);
        let bucket = self.by_hash.entry(h).or_default();
        if let Some(shared) = bucket.iter().find(|i| ***i == isolation) {
            return shared.clone();
        }
        let shared = Arc::new(isolation);
        bucket.push(shared.clone());
        self.len += 1;
        if self.len > 2 * self.swept_at + 64 {
            self.by_hash.retain(|_, b| {
                b.retain(|i| Arc::strong_count(i) > 1 || Arc::ptr_eq(i, &shared));
                !b.is_empty()
            });
            self.len = self.by_hash.values().map(Vec::len).sum();
            self.swept_at = self.len;
        }
        shared
    }
}

type ClusterResolved = (Vec<Arc<ClusterRuleMatch>>, Vec<Arc<ClusterRuleMatch>>);

fn has_named_ports(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .flatten()
        .any(|p| matches!(p.port, PortMatch::Named(_)))
}

/// Whether a pod change (`None`: absent) moves its addresses (or eligibility) and its ports.
fn pod_delta(old: Option<&Pod>, new: Option<&Pod>) -> (bool, bool) {
    match (old, new) {
        (Some(o), Some(n)) => (
            o.ips != n.ips || eligible(o) != eligible(n),
            o.ports != n.ports,
        ),
        _ => (true, true),
    }
}

fn eligible(pod: &Pod) -> bool {
    pod.skip_reason().is_none()
}

fn resolve_rule(index: &ClusterIndex, rule: &Rule, direction: Direction) -> ResolvedRule {
    let Some(peers) = &rule.peers else {
        return ResolvedRule {
            peers: None,
            dest_pods: Vec::new(),
            blocks: AddrSet::new(),
        };
    };
    let keep_pods = direction == Direction::Egress && has_named_ports(rule);
    let mut addrs = Vec::new();
    let mut blocks = Vec::new();
    let mut dest_pods = Vec::new();
    for peer in peers {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let selected: Vec<&Pod> = index
                    .select_pods(namespaces, pods)
                    .into_iter()
                    .filter(|p| eligible(p))
                    .collect();
                addrs.extend(selected.iter().flat_map(|p| p.ips.iter().copied()));
                if keep_pods {
                    dest_pods.extend(selected.iter().map(|p| p.key.clone()));
                }
            }
            Peer::IpBlock { cidr, except } => blocks.push(AddrSet::from_ip_block(cidr, except)),
        }
    }
    let blocks = AddrSet::union_all(&blocks);
    dest_pods.sort();
    dest_pods.dedup();
    ResolvedRule {
        peers: Some(AddrSet::from_addrs(addrs).union(&blocks)),
        dest_pods,
        blocks,
    }
}

/// What one rule allows for one endpoint (`target` is the endpoint's pod).
fn rule_allowed(
    index: &ClusterIndex,
    rule: &Rule,
    resolved: &ResolvedRule,
    direction: Direction,
    target: &Pod,
) -> Allowed {
    let peers = resolved.peers.clone().unwrap_or_else(AddrSet::all);
    let mut b = AllowedBuilder::default();
    let Some(ports) = &rule.ports else {
        b.add_any_port(peers);
        return b.finish();
    };
    for spec in ports {
        match &spec.port {
            PortMatch::All => b.add_ports(spec.protocol, 0, u16::MAX, peers.clone()),
            PortMatch::Range(lo, hi) => b.add_ports(spec.protocol, *lo, *hi, peers.clone()),
            PortMatch::Named(name) => match direction {
                // Ingress: the destination is the endpoint itself.
                Direction::Ingress => {
                    if let Some(port) = target.named_port(name, spec.protocol) {
                        b.add_ports(spec.protocol, port, port, peers.clone());
                    }
                }
                // Egress: resolved on each destination pod; never matches a non-pod address.
                Direction::Egress => {
                    let mut add = |pod: &Pod, only_in: Option<&AddrSet>| {
                        if let Some(port) = pod.named_port(name, spec.protocol) {
                            let ips = pod
                                .ips
                                .iter()
                                .copied()
                                .filter(|ip| only_in.is_none_or(|s| s.contains(*ip)));
                            b.add_ports(spec.protocol, port, port, AddrSet::from_addrs(ips));
                        }
                    };
                    if resolved.peers.is_none() {
                        for pod in index.pods_with_port_name(name).filter(|p| eligible(p)) {
                            add(pod, None);
                        }
                    } else {
                        for key in &resolved.dest_pods {
                            if let Some(pod) = index.pod(key) {
                                add(pod, None);
                            }
                        }
                        if !resolved.blocks.is_empty() {
                            for pod in index.pods_with_port_name(name).filter(|p| eligible(p)) {
                                add(pod, Some(&resolved.blocks));
                            }
                        }
                    }
                }
            },
        }
    }
    b.finish()
}

/// The addresses of a cluster policy peer. hostNetwork pods are never peers (their addresses
/// are the node's, reached through `nodes` or `networks`).
fn cluster_peer_addrs(index: &ClusterIndex, peer: &ClusterPeer, action: Action) -> AddrSet {
    match peer {
        ClusterPeer::Namespaces(ns) => AddrSet::from_addrs(
            index
                .select_pods_in(ns, &crate::policy::model::Selector::everything())
                .into_iter()
                .filter(|p| eligible(p))
                .flat_map(|p| p.ips.iter().copied()),
        ),
        ClusterPeer::Pods { namespaces, pods } => AddrSet::from_addrs(
            index
                .select_pods_in(namespaces, pods)
                .into_iter()
                .filter(|p| eligible(p))
                .flat_map(|p| p.ips.iter().copied()),
        ),
        ClusterPeer::Networks(nets) => AddrSet::from_nets(nets),
        ClusterPeer::Nodes(sel) => AddrSet::from_addrs(
            index
                .nodes()
                .filter(|n| sel.matches(&n.labels))
                .flat_map(|n| n.addresses.iter().copied()),
        ),
        // Learned from DNS answers at run time (`ClusterRuleMatch::domains`): no static address.
        ClusterPeer::DomainNames(_) => AddrSet::new(),
        // Fail closed: an Accept matches nothing, a Deny or Pass everything.
        ClusterPeer::Unknown(_) => match action {
            Action::Accept => AddrSet::new(),
            Action::Deny | Action::Pass => AddrSet::all(),
        },
    }
}

/// Pods a peer selects (for egress named ports, resolved on each destination pod).
fn cluster_peer_pods<'a>(
    index: &'a ClusterIndex,
    peer: &ClusterPeer,
    action: Action,
) -> Vec<&'a Pod> {
    let everything = crate::policy::model::Selector::everything();
    let pods = match peer {
        ClusterPeer::Namespaces(ns) => index.select_pods_in(ns, &everything),
        ClusterPeer::Pods { namespaces, pods } => index.select_pods_in(namespaces, pods),
        ClusterPeer::Unknown(_) if action != Action::Accept => index.pods().collect(),
        _ => Vec::new(),
    };
    pods.into_iter().filter(|p| eligible(p)).collect()
}

fn resolve_cluster_rule(
    index: &ClusterIndex,
    rule: &ClusterRule,
    direction: Direction,
) -> ClusterRuleMatch {
    let peers = AddrSet::union_all(
        &rule
            .peers
            .iter()
            .map(|p| cluster_peer_addrs(index, p, rule.action))
            .collect::<Vec<_>>(),
    );
    let mut b = AllowedBuilder::default();
    let mut named_ingress = Vec::new();
    match &rule.protocols {
        None => b.add_any_port(peers.clone()),
        Some(list) => {
            for p in list {
                match p {
                    ClusterPort::Ports {
                        protocol,
                        start,
                        end,
                    } => b.add_ports(*protocol, *start, *end, peers.clone()),
                    ClusterPort::Named(name) => match direction {
                        Direction::Ingress => named_ingress.push(name.clone()),
                        Direction::Egress => {
                            for peer in &rule.peers {
                                for pod in cluster_peer_pods(index, peer, rule.action) {
                                    for cp in pod
                                        .ports
                                        .iter()
                                        .filter(|cp| cp.name.as_deref() == Some(name.as_str()))
                                    {
                                        b.add_ports(
                                            cp.protocol,
                                            cp.port,
                                            cp.port,
                                            AddrSet::from_addrs(pod.ips.iter().copied()),
                                        );
                                    }
                                }
                            }
                        }
                    },
                }
            }
        }
    }
    named_ingress.sort();
    named_ingress.dedup();
    let mut domains: Vec<String> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            ClusterPeer::DomainNames(names) if direction == Direction::Egress => Some(names),
            _ => None,
        })
        .flatten()
        .cloned()
        .collect();
    domains.sort();
    domains.dedup();
    let port_ranges = rule
        .protocols
        .iter()
        .flatten()
        .filter_map(|p| match p {
            ClusterPort::Ports {
                protocol,
                start,
                end,
            } => Some((*protocol, *start, *end)),
            ClusterPort::Named(_) => None,
        })
        .collect();
    ClusterRuleMatch {
        all_ports: rule.protocols.is_none(),
        peers,
        shared: b.finish(),
        named_ingress,
        domains,
        port_ranges,
    }
}

impl Compiler {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            plan: NodePlan::default(),
            resolved: HashMap::new(),
            selected_by: HashMap::new(),
            cluster_resolved: HashMap::new(),
            cluster_users: BTreeSet::new(),
            isolations: Interner::default(),
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn plan(&self) -> &NodePlan {
        &self.plan
    }

    pub fn into_plan(self) -> NodePlan {
        self.plan
    }

    /// Recompiles everything; used on start and on periodic resyncs.
    pub fn full(&mut self, index: &ClusterIndex) -> &NodePlan {
        self.resolved.clear();
        self.selected_by.clear();
        self.cluster_resolved.clear();
        self.cluster_users.clear();
        self.plan = NodePlan::default();
        self.isolations = Interner::default();
        let pods: Vec<&Pod> = match &self.scope {
            Scope::Node(node) => index.pods_on_node(node).collect(),
            Scope::Cluster => index.pods().collect(),
        };
        for pod in pods {
            self.compile_pod(index, pod);
        }
        &self.plan
    }

    fn resolved(&mut self, index: &ClusterIndex, policy: &Policy) -> Arc<ResolvedPolicy> {
        self.resolved
            .entry(policy.key.clone())
            .or_insert_with(|| {
                let side = |d: Direction| {
                    if policy.isolates(d) {
                        policy
                            .rules(d)
                            .iter()
                            .map(|r| resolve_rule(index, r, d))
                            .collect()
                    } else {
                        Vec::new()
                    }
                };
                Arc::new(ResolvedPolicy {
                    ingress: side(Direction::Ingress),
                    egress: side(Direction::Egress),
                })
            })
            .clone()
    }

    /// (Re)computes one pod's endpoint; returns whether the plan changed.
    fn compile_pod(&mut self, index: &ClusterIndex, pod: &Pod) -> bool {
        let key = pod.key.clone();
        for set in self.selected_by.values_mut() {
            set.remove(&key);
        }
        if let Some(reason) = pod.skip_reason() {
            self.cluster_users.remove(&key);
            let changed = self.plan.endpoints.remove(&key).is_some()
                | (self.plan.skipped.insert(key, reason) != Some(reason));
            return changed;
        }
        self.plan.skipped.remove(&key);
        let mut policies: Vec<&Policy> = index.policies_selecting(pod).collect();
        policies.sort_by(|a, b| a.key.cmp(&b.key));
        for p in &policies {
            self.selected_by
                .entry(p.key.clone())
                .or_default()
                .insert(key.clone());
        }
        let mut side = |direction: Direction| -> Option<Isolation> {
            let isolating: Vec<&Policy> = policies
                .iter()
                .copied()
                .filter(|p| p.isolates(direction))
                .collect();
            if isolating.is_empty() {
                return None;
            }
            let mut rules = Vec::new();
            for policy in &isolating {
                let resolved = self.resolved(index, policy);
                let resolved_rules = match direction {
                    Direction::Ingress => &resolved.ingress,
                    Direction::Egress => &resolved.egress,
                };
                for (i, (rule, res)) in policy
                    .rules(direction)
                    .iter()
                    .zip(resolved_rules)
                    .enumerate()
                {
                    rules.push(RuleAllow {
                        policy: policy.key.clone(),
                        rule: i,
                        allowed: rule_allowed(index, rule, res, direction, pod),
                    });
                }
            }
            let allowed = Allowed::union_all(rules.iter().map(|r| &r.allowed));
            Some(Isolation {
                policies: isolating.iter().map(|p| p.key.clone()).collect(),
                log_allowed: isolating.iter().any(|p| p.log_allowed),
                rules,
                allowed,
            })
        };
        let ingress = side(Direction::Ingress);
        let egress = side(Direction::Egress);
        let ingress = ingress.map(|i| self.isolations.intern(i));
        let egress = egress.map(|i| self.isolations.intern(i));
        let (cluster_ingress, cluster_egress) = self.cluster_rules(index, pod);
        if cluster_ingress.policies.is_empty() {
            self.cluster_users.remove(&key);
        } else {
            self.cluster_users.insert(key.clone());
        }
        let endpoint = Endpoint {
            pod: key.clone(),
            ips: pod.ips.clone(),
            ingress,
            egress,
            audit: index.namespace(&pod.key.namespace).is_some_and(|n| n.audit),
            cluster_ingress,
            cluster_egress,
        };
        let changed = self.plan.endpoints.get(&key) != Some(&endpoint);
        self.plan.endpoints.insert(key, endpoint);
        changed
    }

    fn cluster_resolved(
        &mut self,
        index: &ClusterIndex,
        policy: &ClusterPolicy,
    ) -> Arc<ClusterResolved> {
        self.cluster_resolved
            .entry(policy.key.clone())
            .or_insert_with(|| {
                let side = |d: Direction| {
                    policy
                        .rules(d)
                        .iter()
                        .map(|r| Arc::new(resolve_cluster_rule(index, r, d)))
                        .collect()
                };
                Arc::new((side(Direction::Ingress), side(Direction::Egress)))
            })
            .clone()
    }

    /// The cluster policy rules of a pod, per direction, in evaluation order.
    fn cluster_rules(&mut self, index: &ClusterIndex, pod: &Pod) -> (TierRules, TierRules) {
        let mut ingress = TierRules::default();
        let mut egress = TierRules::default();
        for policy in index.cluster_policies_selecting(pod) {
            let resolved = self.cluster_resolved(index, policy);
            ingress.policies.push(policy.key.clone());
            egress.policies.push(policy.key.clone());
            for (direction, out, matches) in [
                (Direction::Ingress, &mut ingress, &resolved.0),
                (Direction::Egress, &mut egress, &resolved.1),
            ] {
                for (rule, m) in policy.rules(direction).iter().zip(matches) {
                    let own_ports = m
                        .named_ingress
                        .iter()
                        .flat_map(|name| {
                            pod.ports
                                .iter()
                                .filter(move |p| p.name.as_deref() == Some(name.as_str()))
                                .map(|p| (p.protocol, p.port))
                        })
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let tr = TierRule {
                        policy: policy.key.clone(),
                        tier: policy.tier,
                        priority: policy.priority,
                        rule: rule.index,
                        name: rule.name.clone(),
                        action: rule.action,
                        matches: m.clone(),
                        own_ports,
                    };
                    match policy.tier {
                        Tier::Admin => out.admin.push(tr),
                        Tier::Baseline => out.baseline.push(tr),
                    }
                }
            }
        }
        (ingress, egress)
    }

    /// Drops the resolutions of `affected` cluster policies and recompiles the endpoints they
    /// apply to (only those: a pod relabel touches the rules it moves in or out of).
    fn recompile_cluster_users(
        &mut self,
        index: &ClusterIndex,
        affected: &BTreeSet<ClusterPolicyKey>,
        changed: &mut BTreeSet<ObjectKey>,
    ) {
        if affected.is_empty() {
            return;
        }
        for key in affected {
            self.cluster_resolved.remove(key);
        }
        let users: Vec<ObjectKey> = self
            .cluster_users
            .iter()
            .filter(|k| {
                self.plan.endpoints.get(*k).is_some_and(|e| {
                    e.cluster_ingress
                        .policies
                        .iter()
                        .any(|p| affected.contains(p))
                })
            })
            .cloned()
            .collect();
        self.recompile(index, users, changed);
    }

    /// The resolved cluster policies whose rules a pod change can alter: a `namespaces` or
    /// `pods` peer the pod (old or new version) matches, when it enters or leaves the peer, or
    /// changes addresses or (for egress named ports) ports while in it; an unknown peer of a
    /// Deny or Pass rule (it matches every pod). `networks`, `nodes` and `domainNames` do not
    /// depend on pods.
    fn cluster_policies_touching_pod(
        &self,
        index: &ClusterIndex,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> BTreeSet<ClusterPolicyKey> {
        let (addresses_changed, ports_changed) = pod_delta(old, new);
        let matches = |peer: &ClusterPeer, action: Action, pod: Option<&Pod>| -> bool {
            let Some(pod) = pod.filter(|p| eligible(p)) else {
                return false;
            };
            let ns = || index.namespace_labels(&pod.key.namespace);
            match peer {
                ClusterPeer::Namespaces(sel) => ns().is_some_and(|l| sel.matches(l)),
                ClusterPeer::Pods { namespaces, pods } => {
                    ns().is_some_and(|l| namespaces.matches(l)) && pods.matches(&pod.labels)
                }
                ClusterPeer::Unknown(_) => action != Action::Accept,
                ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_) => {
                    false
                }
            }
        };
        let rule_touched = |direction: Direction, rule: &ClusterRule| -> bool {
            let named = direction == Direction::Egress
                && rule
                    .protocols
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, ClusterPort::Named(_)));
            rule.peers.iter().any(|peer| {
                let (was, is) = (
                    matches(peer, rule.action, old),
                    matches(peer, rule.action, new),
                );
                was != is || ((was || is) && (addresses_changed || (named && ports_changed)))
            })
        };
        self.cluster_resolved
            .keys()
            .filter(|key| {
                index.cluster_policy(key).is_none_or(|policy| {
                    policy
                        .ingress
                        .iter()
                        .any(|r| rule_touched(Direction::Ingress, r))
                        || policy
                            .egress
                            .iter()
                            .any(|r| rule_touched(Direction::Egress, r))
                })
            })
            .cloned()
            .collect()
    }

    /// The resolved cluster policies with a `namespaces` or `pods` peer whose namespace
    /// selector a namespace change flips (or that the namespace's creation or deletion
    /// concerns).
    fn cluster_policies_touching_namespace(
        &self,
        index: &ClusterIndex,
        old: Option<&Namespace>,
        new: Option<&Namespace>,
    ) -> BTreeSet<ClusterPolicyKey> {
        let empty = Default::default();
        let (old_labels, new_labels) = (
            old.map_or(&empty, |n| &n.labels),
            new.map_or(&empty, |n| &n.labels),
        );
        let flips = |sel: &crate::policy::model::Selector| {
            sel.matches(old_labels) != sel.matches(new_labels) || old.is_none() != new.is_none()
        };
        self.cluster_resolved
            .keys()
            .filter(|key| {
                index.cluster_policy(key).is_none_or(|policy| {
                    policy
                        .ingress
                        .iter()
                        .chain(&policy.egress)
                        .flat_map(|r| &r.peers)
                        .any(|peer| match peer {
                            ClusterPeer::Namespaces(sel) => flips(sel),
                            ClusterPeer::Pods { namespaces, .. } => flips(namespaces),
                            _ => false,
                        })
                })
            })
            .cloned()
            .collect()
    }

    /// The cluster policies (or the Nodes their `nodes` peers read) changed: drops every
    /// cluster policy resolution and recompiles the endpoints in scope, each resolving the
    /// cluster policies it meets once more. NetworkPolicy resolutions are kept (they do not
    /// depend on cluster policies). Returns the endpoints whose state changed.
    pub fn cluster_policies_changed(&mut self, index: &ClusterIndex) -> BTreeSet<ObjectKey> {
        self.cluster_resolved.clear();
        let pods: Vec<&Pod> = match &self.scope {
            Scope::Node(node) => index.pods_on_node(node).collect(),
            Scope::Cluster => index.pods().collect(),
        };
        let mut changed = BTreeSet::new();
        for pod in pods {
            if self.compile_pod(index, pod) {
                changed.insert(pod.key.clone());
            }
        }
        changed
    }

    fn remove_endpoint(&mut self, key: &ObjectKey) -> bool {
        self.cluster_users.remove(key);
        for set in self.selected_by.values_mut() {
            set.remove(key);
        }
        self.plan.endpoints.remove(key).is_some() | self.plan.skipped.remove(key).is_some()
    }

    /// Recompiles the endpoints that use any of `policies`, after dropping their resolutions.
    fn recompile_users(
        &mut self,
        index: &ClusterIndex,
        policies: &BTreeSet<ObjectKey>,
        changed: &mut BTreeSet<ObjectKey>,
    ) {
        let mut users = BTreeSet::new();
        for p in policies {
            self.resolved.remove(p);
            users.extend(self.selected_by.get(p).into_iter().flatten().cloned());
        }
        self.recompile(index, users, changed);
    }

    /// Recompiles the endpoints `keys` that are still in the index and in scope; adds those
    /// whose plan changed to `changed`.
    fn recompile(
        &mut self,
        index: &ClusterIndex,
        keys: impl IntoIterator<Item = ObjectKey>,
        changed: &mut BTreeSet<ObjectKey>,
    ) {
        for key in keys {
            if let Some(pod) = index.pod(&key)
                && self.scope.includes(pod)
                && self.compile_pod(index, pod)
            {
                changed.insert(key);
            }
        }
    }

    /// Cached policies whose resolved peers change when `old` becomes `new`: a peer selector
    /// that starts or stops matching the pod, or one that keeps matching it while the pod's
    /// addresses, ports (for egress named ports) or eligibility change. A label change that moves
    /// no selector touches nothing.
    fn policies_touching_pod(
        &self,
        index: &ClusterIndex,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> BTreeSet<ObjectKey> {
        let (addresses_changed, ports_changed) = pod_delta(old, new);
        let pods: Vec<&Pod> = old.into_iter().chain(new).filter(|p| eligible(p)).collect();
        let peer_matches = |peer: &Peer, pod: Option<&Pod>| -> bool {
            let Some(pod) = pod.filter(|p| eligible(p)) else {
                return false;
            };
            match peer {
                Peer::Pods { namespaces, pods } => {
                    index.peer_matches(namespaces, pods, &pod.key.namespace, &pod.labels)
                }
                Peer::IpBlock { .. } => false,
            }
        };
        let rule_touched = |direction: Direction, rule: &Rule| -> bool {
            let named = direction == Direction::Egress && has_named_ports(rule);
            let Some(peers) = &rule.peers else {
                // Every pod is a peer already; only egress named ports resolve on pods.
                return named && (addresses_changed || ports_changed);
            };
            peers.iter().any(|peer| match peer {
                Peer::Pods { .. } => {
                    let (was, is) = (peer_matches(peer, old), peer_matches(peer, new));
                    was != is || ((was || is) && (addresses_changed || (named && ports_changed)))
                }
                // Block addresses do not depend on pods, except through egress named ports.
                Peer::IpBlock { cidr, except } => {
                    named
                        && (addresses_changed || ports_changed)
                        && pods.iter().any(|p| {
                            let block = AddrSet::from_ip_block(cidr, except);
                            p.ips.iter().any(|ip| block.contains(*ip))
                        })
                }
            })
        };
        self.resolved
            .keys()
            .filter(|key| {
                index.policy(key).is_none_or(|policy| {
                    [Direction::Ingress, Direction::Egress]
                        .into_iter()
                        .filter(|d| policy.isolates(*d))
                        .any(|d| policy.rules(d).iter().any(|r| rule_touched(d, r)))
                })
            })
            .cloned()
            .collect()
    }

    /// A pod was added, changed or deleted (the index already holds the new state). Returns the
    /// endpoints whose desired state changed.
    pub fn pod_changed(
        &mut self,
        index: &ClusterIndex,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        let affected = self.policies_touching_pod(index, old, new);
        self.recompile_users(index, &affected, &mut changed);
        let affected = self.cluster_policies_touching_pod(index, old, new);
        self.recompile_cluster_users(index, &affected, &mut changed);
        if let Some(old) = old
            && new.is_none_or(|n| !self.scope.includes(n))
            && self.remove_endpoint(&old.key)
        {
            changed.insert(old.key.clone());
        }
        if let Some(new) = new
            && self.scope.includes(new)
            && self.compile_pod(index, new)
        {
            changed.insert(new.key.clone());
        }
        changed
    }

    /// A policy was added, changed or deleted (the index holds the new state).
    pub fn policy_changed(&mut self, index: &ClusterIndex, key: &ObjectKey) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        // Previously selected endpoints, plus the pods the new version selects.
        self.recompile_users(index, &BTreeSet::from([key.clone()]), &mut changed);
        if let Some(policy) = index.policy(key) {
            let candidates: Vec<&Pod> = index
                .select_pods(
                    &crate::policy::model::NamespaceScope::Own(key.namespace.clone()),
                    &policy.pod_selector,
                )
                .into_iter()
                .filter(|p| self.scope.includes(p))
                .collect();
            for pod in candidates {
                if self.compile_pod(index, pod) {
                    changed.insert(pod.key.clone());
                }
            }
        }
        changed
    }

    /// A namespace was added, relabelled or deleted: namespace selectors may change meaning.
    pub fn namespace_changed(
        &mut self,
        index: &ClusterIndex,
        old: Option<&Namespace>,
        new: Option<&Namespace>,
    ) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        let empty = Default::default();
        let (old_labels, new_labels) = (
            old.map_or(&empty, |n| &n.labels),
            new.map_or(&empty, |n| &n.labels),
        );
        let affected: BTreeSet<ObjectKey> = self
            .resolved
            .keys()
            .filter(|key| {
                index.policy(key).is_none_or(|policy| {
                    [&policy.ingress, &policy.egress]
                        .into_iter()
                        .flatten()
                        .flat_map(|r| r.peers.iter().flatten())
                        .any(|peer| match peer {
                            Peer::Pods {
                                namespaces: crate::policy::model::NamespaceScope::Selected(sel),
                                ..
                            } => {
                                sel.matches(old_labels) != sel.matches(new_labels)
                                    || old.is_none() != new.is_none()
                            }
                            _ => false,
                        })
                })
            })
            .cloned()
            .collect();
        self.recompile_users(index, &affected, &mut changed);
        let affected = self.cluster_policies_touching_namespace(index, old, new);
        self.recompile_cluster_users(index, &affected, &mut changed);
        // The namespace's own pods, once: a relabel can make them subjects of cluster
        // policies, and entering or leaving audit mode changes their endpoints.
        let relabelled = old.map(|n| &n.labels) != new.map(|n| &n.labels);
        let audit_flipped = old.is_some_and(|n| n.audit) != new.is_some_and(|n| n.audit);
        if ((relabelled && index.cluster_policy_count() > 0) || audit_flipped)
            && let Some(name) = old.or(new).map(|n| n.name.clone())
        {
            let pods: Vec<ObjectKey> = index
                .pods()
                .filter(|p| p.key.namespace == name)
                .map(|p| p.key.clone())
                .collect();
            self.recompile(index, pods, &mut changed);
        }
        changed
    }
}
