//! ClusterNetworkPolicy semantics the corpus format cannot express (a pod reaching itself,
//! hostNetwork pods, Nodes, ties), and the reconciler's handling of cluster policy and Node
//! updates, judged through the evaluator `simulate` and `explain` use.

use std::net::IpAddr;

use nftpol::engine::reconcile::Reconciler;
use nftpol::policy::compile::{Scope, cluster_policy_ties, compile};
use nftpol::policy::convert;
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::model::{ClusterPolicyKind, Protocol, Tier};
use nftpol::policy::verdict::{SideVerdict, explain_text, judge, judge_pods};
use nftpol::source::{Change, Listing, Update, manifest};
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sel(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

fn pod(ns: &str, name: &str, addr: &str, host_network: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": "n1", "hostNetwork": host_network,
                    "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "name": "web"}]}]},
           "status": {"phase": "Running", "podIP": addr}})
}

fn cnp(
    name: &str,
    tier: &str,
    priority: u32,
    subject: Value,
    ingress: Value,
    egress: Value,
) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name},
           "spec": {"tier": tier, "priority": priority, "subject": subject,
                    "ingress": ingress, "egress": egress}})
}

fn base() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}),
        pod("a", "one", "10.0.0.1", false),
        pod("b", "two", "10.0.1.1", false),
        pod("b", "host", "192.168.0.9", true),
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "n1", "labels": {"role": "worker"}},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.9"},
                                        {"type": "Hostname", "address": "n1"}]}}),
    ]
}

fn index(docs: Vec<Value>) -> ClusterIndex {
    let loaded = manifest::load_values("test", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    ClusterIndex::from_state(&loaded.state)
}

#[test]
fn a_pod_reaching_itself_and_host_network_pods_are_not_subject() {
    let mut docs = base();
    docs.push(cnp(
        "deny-all",
        "Admin",
        1,
        json!({"namespaces": {}}),
        json!([{"action": "Deny", "from": [{"namespaces": {}}]}]),
        json!([{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]),
    ));
    let index = index(docs);
    let plan = compile(&index, &Scope::Cluster);
    let one = plan.endpoint_by_ip(ip("10.0.0.1")).expect("one");
    // Its own address: not subject (the Admin Deny would match it otherwise).
    let v = judge_pods(one, one, Protocol::Tcp, 80).expect("same family");
    assert!(v.allowed(), "{v:?}");
    // Another pod: denied both ways.
    let two = plan.endpoint_by_ip(ip("10.0.1.1")).expect("two");
    assert!(!judge_pods(one, two, Protocol::Tcp, 80).unwrap().allowed());
    // The hostNetwork pod is no endpoint and no subject; a `namespaces` peer does not hold its
    // address, so the node's address is judged on the pod side only.
    assert!(plan.endpoint_by_ip(ip("192.168.0.9")).is_none());
    let v = judge(&plan, ip("192.168.0.9"), ip("10.0.0.1"), Protocol::Tcp, 80);
    assert!(
        v.allowed(),
        "ingress Deny from namespaces does not cover a hostNetwork pod: {v:?}"
    );
    // Egress to the node's address: the `networks` Deny covers it.
    let v = judge(&plan, ip("10.0.0.1"), ip("192.168.0.9"), Protocol::Tcp, 80);
    assert!(!v.allowed());
}

#[test]
fn nodes_peers_are_the_addresses_of_matching_nodes() {
    let mut docs = base();
    docs.push(cnp(
        "deny-nodes",
        "Admin",
        1,
        json!({"namespaces": sel("a")}),
        json!([]),
        json!([{"name": "to-workers", "action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "worker"}}}]}]),
    ));
    let index = index(docs);
    let plan = compile(&index, &Scope::Cluster);
    let v = judge(&plan, ip("10.0.0.1"), ip("192.168.0.9"), Protocol::Tcp, 22);
    match &v.egress {
        SideVerdict::Cluster { by, .. } => {
            assert_eq!(by.rule, "to-workers");
            assert_eq!(by.tier, Tier::Admin);
        }
        other => panic!("expected a cluster verdict, got {other:?}"),
    }
    assert!(!v.allowed());
    assert!(judge(&plan, ip("10.0.0.1"), ip("192.168.0.10"), Protocol::Tcp, 22).allowed());
}

#[test]
fn explain_names_tier_policy_rule_and_what_was_passed() {
    let mut docs = base();
    docs.push(cnp(
        "pass-b",
        "Admin",
        5,
        json!({"namespaces": sel("a")}),
        json!([{"name": "let-b-through", "action": "Pass", "from": [{"namespaces": sel("b")}]}]),
        json!([]),
    ));
    docs.push(cnp(
        "baseline-deny",
        "Baseline",
        5,
        json!({"namespaces": sel("a")}),
        json!([{"action": "Deny", "from": [{"namespaces": {}}],
                "protocols": [{"destinationNamedPort": "web"}]}]),
        json!([]),
    ));
    let index = index(docs);
    let plan = compile(&index, &Scope::Cluster);
    let v = judge(&plan, ip("10.0.1.1"), ip("10.0.0.1"), Protocol::Tcp, 80);
    assert!(!v.allowed());
    let text = explain_text(&index, &plan, "b/two", "a/one", &v);
    assert!(text.contains("passed over ClusterNetworkPolicy pass-b (Admin tier, priority 5) ingress rule let-b-through"), "{text}");
    assert!(text.contains("DENIED (dropped silently): ClusterNetworkPolicy baseline-deny (Baseline tier, priority 5) ingress rule #0: Deny"), "{text}");
    // The named port resolves on the destination: 81 is not `web`.
    assert!(judge(&plan, ip("10.0.1.1"), ip("10.0.0.1"), Protocol::Tcp, 81).allowed());
}

#[test]
fn equal_priorities_are_reported_as_ties() {
    let mut docs = base();
    for name in ["x", "y"] {
        docs.push(cnp(
            name,
            "Admin",
            7,
            json!({"namespaces": sel("a")}),
            json!([{"action": "Accept", "from": [{"namespaces": {}}]}]),
            json!([]),
        ));
    }
    docs.push(cnp(
        "z",
        "Admin",
        8,
        json!({"namespaces": sel("a")}),
        json!([]),
        json!([]),
    ));
    let index = index(docs);
    let plan = compile(&index, &Scope::Cluster);
    let ties = cluster_policy_ties(&index, &plan);
    assert_eq!(ties.len(), 1, "{ties:?}");
    let (a, b) = ties.into_iter().next().unwrap();
    assert_eq!((a.name.as_str(), b.name.as_str()), ("x", "y"));
}

#[test]
fn the_reconciler_applies_cluster_policy_and_node_updates() {
    let loaded = manifest::load_values("test", base()).expect("loads");
    let mut r = Reconciler::new("n1");
    r.apply(Update::Namespace(Change::Relisted(
        loaded.state.namespaces.clone().into(),
    )));
    r.apply(Update::Pod(Change::Relisted(
        loaded.state.pods.clone().into(),
    )));
    r.apply(Update::Policy(Change::Relisted(Listing::from(Vec::new()))));
    assert!(r.ready(), "cluster policies and Nodes are optional");
    r.take_dirty();
    let deny = convert::cluster_policy(&cnp(
        "deny-nodes",
        "Admin",
        1,
        json!({"namespaces": sel("a")}),
        json!([]),
        json!([{"action": "Deny", "to": [{"nodes": {}}]}]),
    ))
    .expect("valid");
    let key = deny.key.clone();
    assert_eq!(key.kind, ClusterPolicyKind::ClusterNetworkPolicy);
    r.apply(Update::ClusterPolicy(Change::Applied(deny)));
    assert!(r.take_dirty());
    let allowed = |r: &Reconciler| {
        judge(
            r.plan(),
            ip("10.0.0.1"),
            ip("192.168.0.9"),
            Protocol::Tcp,
            22,
        )
        .allowed()
    };
    assert!(allowed(&r), "no Node known yet: `nodes` matches nothing");
    r.apply(Update::Node(Change::Relisted(
        loaded.state.nodes.clone().into(),
    )));
    assert!(r.take_dirty());
    assert!(!allowed(&r));
    r.apply(Update::Node(Change::Deleted("n1".into())));
    assert!(allowed(&r));
    r.apply(Update::Node(Change::Applied(loaded.state.nodes[0].clone())));
    assert!(!allowed(&r));
    r.apply(Update::ClusterPolicy(Change::Relisted(Listing::from(
        Vec::new(),
    ))));
    assert!(allowed(&r), "a relist without it deletes it");
    assert!(r.index().cluster_policy(&key).is_none());
}

/// Pod and namespace churn under cluster policies of every peer kind: after each watch event
/// the reconciler's incremental plan equals a full compile of the same state (only the cluster
/// policies a change touches are resolved again, so a missed one would show here).
#[test]
fn pod_and_namespace_churn_keeps_cluster_policy_plans_exact() {
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "red"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b", "labels": {"team": "blue"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}),
        cnp(
            "admin-pods",
            "Admin",
            1,
            json!({"namespaces": {}}),
            json!([{"action": "Deny", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "red"}},
                                                        "podSelector": {"matchLabels": {"app": "x"}}}}]},
                   {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": "blue"}}}],
                    "protocols": [{"destinationNamedPort": "web"}]}]),
            json!([{"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "y"}}}}],
                    "protocols": [{"destinationNamedPort": "web"}]},
                   {"action": "Deny", "to": [{"networks": ["10.0.0.0/30"]}]}]),
        ),
        cnp(
            "baseline-ns",
            "Baseline",
            5,
            json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "z"}}}}),
            json!([{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"team": "red"}}}]},
                   {"action": "Accept", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}]),
            json!([]),
        ),
    ];
    let names = ["p0", "p1", "p2", "p3", "p4", "p5"];
    for (i, n) in names.iter().enumerate() {
        docs.push(pod(
            ["a", "b", "c"][i % 3],
            n,
            &format!("10.0.0.{}", i + 1),
            false,
        ));
    }
    let loaded = manifest::load_values("test", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    let mut state = loaded.state;
    let mut r = Reconciler::new("n1");
    r.apply(Update::Namespace(Change::Relisted(
        state.namespaces.clone().into(),
    )));
    r.apply(Update::Pod(Change::Relisted(state.pods.clone().into())));
    r.apply(Update::Policy(Change::Relisted(Listing::from(Vec::new()))));
    r.apply(Update::ClusterPolicy(Change::Relisted(
        state.cluster_policies.clone().into(),
    )));
    let full = |s: &nftpol::policy::model::ClusterState| {
        compile(&ClusterIndex::from_state(s), &Scope::Node("n1".into()))
    };
    assert_eq!(r.plan(), &full(&state));
    // A fixed-seed LCG: the same 400 steps every run.
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut deleted: Vec<nftpol::policy::model::Pod> = Vec::new();
    for step in 0..400 {
        let what = next(5);
        let update = match what {
            0 | 1 if !state.pods.is_empty() => {
                // Relabel a pod (or give it another address).
                let i = next(state.pods.len() as u64) as usize;
                let p = &mut state.pods[i];
                if what == 0 {
                    std::sync::Arc::make_mut(&mut p.labels)
                        .insert("app".into(), ["x", "y", "z"][next(3) as usize].into());
                } else {
                    p.ips = vec![format!("10.0.0.{}", 1 + next(8)).parse().unwrap()];
                }
                Update::Pod(Change::Applied(p.clone()))
            }
            2 => {
                let i = next(state.namespaces.len() as u64) as usize;
                let ns = &mut state.namespaces[i];
                match next(3) {
                    0 => ns.labels.remove("team"),
                    1 => ns.labels.insert("team".into(), "red".into()),
                    _ => ns.labels.insert("team".into(), "blue".into()),
                };
                Update::Namespace(Change::Applied(ns.clone()))
            }
            3 if !state.pods.is_empty() => {
                let i = next(state.pods.len() as u64) as usize;
                let p = state.pods.remove(i);
                let key = p.key.clone();
                deleted.push(p);
                Update::Pod(Change::Deleted(key))
            }
            _ => match deleted.pop() {
                Some(p) => {
                    state.pods.push(p.clone());
                    Update::Pod(Change::Applied(p))
                }
                None => continue,
            },
        };
        r.apply(update);
        assert_eq!(r.plan(), &full(&state), "step {step}");
    }
    assert!(
        r.plan()
            .endpoints
            .values()
            .any(|e| !e.cluster_ingress.is_empty()),
        "the churn kept some pods subject to cluster policies"
    );
}
