//! NetworkPolicy semantics that the upstream e2e suite never probes: endPort ranges, named ports
//! and their protocol, Exists/DoesNotExist, policyTypes defaulting, IPv6 and dual-stack pods and
//! ipBlocks, overlapping ipBlocks across peers and rules, hostNetwork pods and pods without an
//! address. Plus property tests of the interval normal form the dataplane relies on.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use nftpol::cli::simulate::Matrix;
use nftpol::dataplane::{Options, Ruleset};
use nftpol::policy::compile::{NodePlan, Scope, compile};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::intervals::{AddrSet, AllowedBuilder, Ranges};
use nftpol::policy::model::{ObjectKey, Protocol, SkipReason};
use nftpol::policy::verdict::judge;
use nftpol::source::manifest;
use proptest::prelude::*;

/// Pods x/a (10.0.0.1), x/b (10.0.0.2), y/c (10.0.1.3) with ports, and the given policies.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a, tier: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c, canary: "true"}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.3}
"#;

fn plan(yaml: &str) -> (ClusterIndex, NodePlan) {
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let loaded = manifest::load_values("test.yaml", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    let index = ClusterIndex::from_state(&loaded.state);
    let plan = compile(&index, &Scope::Cluster);
    (index, plan)
}

fn allowed(plan: &NodePlan, from: &str, to: &str, port: u16, protocol: Protocol) -> bool {
    let m = Matrix::predict(plan, port, protocol);
    m.allowed[from][to]
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn end_port_admits_only_ports_inside_the_range() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{ports: [{port: 8000, endPort: 8080}]}]
"#
    ));
    for (port, want) in [
        (7999, false),
        (8000, true),
        (8040, true),
        (8080, true),
        (8081, false),
    ] {
        assert_eq!(
            allowed(&p, "x/a", "x/b", port, Protocol::Tcp),
            want,
            "port {port}"
        );
    }
    assert!(
        !allowed(&p, "x/a", "x/b", 8040, Protocol::Udp),
        "endPort defaults to TCP"
    );
}

#[test]
fn named_port_resolves_only_with_the_same_protocol() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: dns}, {port: dns, protocol: UDP}, {port: http, protocol: UDP}]}]
"#
    ));
    // dns is declared as 53/UDP on x/a: the TCP spelling of the name resolves to nothing.
    assert!(allowed(&p, "x/b", "x/a", 53, Protocol::Udp));
    assert!(!allowed(&p, "x/b", "x/a", 53, Protocol::Tcp));
    // http is 8080/TCP: a UDP named port http matches nothing.
    assert!(!allowed(&p, "x/b", "x/a", 8080, Protocol::Udp));
    assert!(!allowed(&p, "x/b", "x/a", 8080, Protocol::Tcp));
}

#[test]
fn egress_named_port_resolves_per_destination_and_never_on_other_addresses() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
"#
    ));
    // "http" is 8080 on x/a and 9090 on x/b.
    assert!(allowed(&p, "y/c", "x/a", 8080, Protocol::Tcp));
    assert!(!allowed(&p, "y/c", "x/a", 9090, Protocol::Tcp));
    assert!(allowed(&p, "y/c", "x/b", 9090, Protocol::Tcp));
    assert!(!allowed(&p, "y/c", "x/b", 8080, Protocol::Tcp));
    let v = judge(&p, ip("10.0.1.3"), ip("192.0.2.1"), Protocol::Tcp, 8080);
    assert!(!v.allowed(), "a named port never matches a non-pod address");
}

#[test]
fn exists_and_does_not_exist() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sel, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: canary, operator: DoesNotExist}]}
"#
    ));
    // x/a has tier: isolated; x/b has none: open.
    assert!(allowed(&p, "x/b", "x/a", 80, Protocol::Tcp));
    assert!(
        !allowed(&p, "y/c", "x/a", 80, Protocol::Tcp),
        "y/c has canary"
    );
    assert!(allowed(&p, "y/c", "x/b", 80, Protocol::Tcp));
}

/// Omitted `policyTypes` mean Ingress, plus Egress when the policy has egress rules. The API
/// server defaults an explicit empty list the same way (`len(policyTypes) == 0`), so both
/// spellings must give the same plan.
#[test]
fn policy_types_default_follows_the_egress_rules() {
    for types in ["", "  policyTypes: []\n"] {
        let policies = format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: both, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
{types}  egress: [{{to: [{{podSelector: {{matchLabels: {{app: b}}}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ingress-only, namespace: y}}
spec:
  podSelector: {{}}
{types}  egress: []
"#
        );
        let (_, p) = plan(&format!("{PODS}---\n{policies}"));
        let a = p.endpoint(&"x/a".parse_key()).expect("x/a");
        assert!(a.ingress.is_some() && a.egress.is_some(), "{types}");
        assert!(allowed(&p, "x/a", "x/b", 80, Protocol::Tcp));
        assert!(!allowed(&p, "x/a", "y/c", 80, Protocol::Tcp));
        assert!(!allowed(&p, "x/b", "x/a", 80, Protocol::Tcp));
        // An empty egress list: ingress only (deny all in), egress open.
        let c = p.endpoint(&"y/c".parse_key()).expect("y/c");
        assert!(c.ingress.is_some() && c.egress.is_none(), "{types}");
        assert!(!allowed(&p, "x/b", "y/c", 80, Protocol::Tcp));
        assert!(allowed(&p, "y/c", "x/b", 80, Protocol::Tcp));
    }
}

/// Selectors the API server would reject (label keys and values it would not store) make the
/// policy invalid: reported with its field and skipped, while the valid policies apply. An
/// invalid value in an In/NotIn list, which the API server still stores in old policies, is a
/// warning at its field, and the policy applies.
#[test]
fn invalid_label_selectors_are_reported_and_skipped() {
    let policies = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: space, namespace: x}
spec:
  podSelector: {matchLabels: {app: "has space"}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-key, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: "team name", operator: Exists}]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-value, namespace: y}
spec:
  podSelector: {}
  egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a, "b;c"]}]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
"#;
    let docs: Vec<serde_json::Value> =
        serde_norway::Deserializer::from_str(&format!("{PODS}---\n{policies}"))
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect();
    let loaded = manifest::load_values("test.yaml", docs).expect("loads");
    let mut invalid: Vec<(String, String)> = loaded
        .invalid
        .iter()
        .map(|s| (s.error.object.clone(), s.error.field.clone()))
        .collect();
    invalid.sort();
    assert_eq!(
        invalid,
        [
            (
                "x/bad-key",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].key"
            ),
            ("x/space", "spec.podSelector.matchLabels"),
        ]
        .map(|(o, f)| (o.to_string(), f.to_string()))
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains(
            "NetworkPolicy y/bad-value: spec.egress[0].to[0].podSelector.matchExpressions[0].values[1]: invalid value \"b;c\""
        ),
        "{:?}",
        loaded.warnings
    );
    let mut keys: Vec<String> = loaded
        .state
        .policies
        .iter()
        .map(|p| p.key.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["x/deny-b", "y/bad-value"]);
}

/// Policies with invalid values in In/NotIn lists (kept by the API server from before it
/// checked them) still isolate the pods they select: skipping them would leave those pods
/// open. The invalid value matches no label: `In` selects by the valid values only, `NotIn`
/// excludes by them only.
#[test]
fn policies_with_invalid_in_and_not_in_values_still_isolate() {
    let policies = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [a, "not valid!"]}]}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-from-b, namespace: y}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: ["b;c"]}]}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [b, "has space"]}]}
"#;
    let yaml = format!("{PODS}---\n{policies}");
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let loaded = manifest::load_values("test.yaml", docs).expect("loads");
    assert_eq!(loaded.warnings.len(), 3, "{:?}", loaded.warnings);
    let (_, p) = plan(&yaml);
    // x/a is isolated (In [a, <invalid>] selects it), x/b is not.
    assert!(!allowed(&p, "x/b", "x/a", 80, Protocol::Tcp));
    assert!(!allowed(&p, "y/c", "x/a", 80, Protocol::Tcp));
    assert!(allowed(&p, "x/a", "x/b", 80, Protocol::Tcp));
    // y/c is isolated (NotIn [<invalid>] excludes nothing) and admits only app=b.
    assert!(allowed(&p, "x/b", "y/c", 80, Protocol::Tcp));
    assert!(!allowed(&p, "x/a", "y/c", 80, Protocol::Tcp));
}

/// A pod or namespace manifest with labels the API server would reject is unusable input, like
/// any other invalid pod: nftpol cannot know which pods the author meant policies to select.
#[test]
fn invalid_pod_and_namespace_labels_are_unusable_input() {
    for doc in [
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "has space"}}}"#,
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"-team": "a"}}}"#,
    ] {
        let doc: serde_json::Value = serde_json::from_str(doc).expect("json");
        let err = manifest::load_values("test.json", [doc]).expect_err("invalid labels");
        assert!(err.to_string().contains("metadata.labels"), "{err}");
    }
}

#[test]
fn ipv6_and_dual_stack() {
    let (_, p) = plan(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: dual, namespace: x, labels: {app: dual}}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: x, labels: {app: v6}}
status: {podIPs: [{ip: "fd00::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v6b, namespace: x, labels: {app: v6b}}
status: {podIPs: [{ip: "fd00::5"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v4, namespace: x, labels: {app: v4}}
status: {podIPs: [{ip: 10.0.0.4}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6-block, namespace: x}
spec:
  podSelector: {matchLabels: {app: dual}}
  ingress:
  - from: [{ipBlock: {cidr: "fd00::/64", except: ["fd00::5/128"]}}]
  - from: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{port: 443}]
"#,
    );
    assert!(allowed(&p, "x/v6", "x/dual", 80, Protocol::Tcp));
    assert!(!allowed(&p, "x/v6b", "x/dual", 80, Protocol::Tcp), "except");
    assert!(!allowed(&p, "x/v4", "x/dual", 80, Protocol::Tcp));
    assert!(allowed(&p, "x/v4", "x/dual", 443, Protocol::Tcp));
    // v6 and v4 share no family: never reachable.
    assert!(!allowed(&p, "x/v6", "x/v4", 80, Protocol::Tcp));
    // The dual-stack pod's IPv6 address is isolated as well as its IPv4 one.
    let v = judge(&p, ip("fd00::5"), ip("fd00::1"), Protocol::Tcp, 80);
    assert!(!v.allowed());
}

#[test]
fn overlapping_ip_blocks_across_peers_and_rules_are_merged() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    - ipBlock: {cidr: 10.1.2.0/24}
  - to:
    - ipBlock: {cidr: 10.1.0.0/20, except: [10.1.2.0/23]}
    ports: [{port: 22}]
"#
    ));
    let a = ip("10.0.0.1");
    let check = |dst: &str, port: u16| judge(&p, a, ip(dst), Protocol::Tcp, port).allowed();
    assert!(check("10.1.2.3", 80), "second peer fills the except hole");
    assert!(
        !check("10.1.4.3", 80),
        "inside the except, outside the second peer"
    );
    assert!(
        check("10.1.4.3", 22),
        "...but the second rule allows port 22 there"
    );
    assert!(!check("10.1.3.3", 22), "the second rule's own except");
    assert!(!check("10.1.16.1", 22), "outside every block for port 22");
    assert!(check("10.200.0.1", 80));
    assert!(!check("11.0.0.1", 80));
    // The merged sets never overlap: the egress side is one any-port set and one port set.
    let e = p
        .endpoint(&"x/a".parse_key())
        .unwrap()
        .egress
        .as_ref()
        .unwrap();
    let ranges = e.allowed.any_port.v4.ranges();
    assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0));
}

#[test]
fn host_network_pods_and_pods_without_address_are_skipped() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x, labels: {app: b}}
spec: {hostNetwork: true}
status: {podIP: 192.168.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: x, labels: {app: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
"#
    ));
    assert_eq!(
        p.skipped_counts().into_iter().collect::<Vec<_>>(),
        vec![(SkipReason::HostNetwork, 1), (SkipReason::NoAddress, 1)]
    );
    let m = Matrix::predict(&p, 80, Protocol::Tcp);
    assert_eq!(m.pods, vec!["x/a", "x/b", "y/c"]);
    // The hostNetwork pod matches app=b, but its address (the node's) is not a peer.
    let v = judge(&p, ip("192.168.1.10"), ip("10.0.0.1"), Protocol::Tcp, 80);
    assert!(!v.allowed());
    assert!(allowed(&p, "x/b", "x/a", 80, Protocol::Tcp));
}

#[test]
fn empty_from_allows_everyone_and_absent_ingress_allows_no_one() {
    let (_, p) = plan(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: closed, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
"#
    ));
    assert!(allowed(&p, "y/c", "x/a", 80, Protocol::Sctp));
    assert!(!allowed(&p, "y/c", "x/b", 80, Protocol::Tcp));
}

trait ParseKey {
    fn parse_key(&self) -> nftpol::policy::model::ObjectKey;
}
impl ParseKey for str {
    fn parse_key(&self) -> nftpol::policy::model::ObjectKey {
        nftpol::policy::model::ObjectKey::parse(self).expect("ns/name")
    }
}

// --- property tests of the interval normal form ---------------------------------------------

fn small_ranges() -> impl Strategy<Value = Vec<(u32, u32)>> {
    prop::collection::vec((0u32..200, 0u32..40), 0..12)
        .prop_map(|v| v.into_iter().map(|(lo, len)| (lo, lo + len)).collect())
}

proptest! {
    #[test]
    fn ranges_are_disjoint_and_cover_exactly_the_union(input in small_ranges()) {
        let r = Ranges::from_ranges(input.clone());
        // Sorted, disjoint and not even adjacent (nft would reject or split those).
        for w in r.ranges().windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0);
        }
        for v in 0..260u32 {
            let want = input.iter().any(|(lo, hi)| *lo <= v && v <= *hi);
            prop_assert_eq!(r.contains(v), want, "value {}", v);
        }
    }

    #[test]
    fn subtraction_is_exact(a in small_ranges(), b in small_ranges()) {
        let d = Ranges::from_ranges(a.clone()).subtract(&Ranges::from_ranges(b.clone()));
        for w in d.ranges().windows(2) {
            prop_assert!(w[0].1 < w[1].0);
        }
        for v in 0..260u32 {
            let want = a.iter().any(|(lo, hi)| *lo <= v && v <= *hi)
                && !b.iter().any(|(lo, hi)| *lo <= v && v <= *hi);
            prop_assert_eq!(d.contains(v), want, "value {}", v);
        }
    }

    #[test]
    fn allowed_port_blocks_never_overlap_and_allow_exactly_the_union(
        entries in prop::collection::vec(
            (0u8..3, 0u16..50, 0u16..20, small_ranges(), any::<bool>()), 0..10)
    ) {
        let proto = |i: u8| Protocol::ALL[i as usize];
        let addrs = |r: &Vec<(u32, u32)>| {
            let nets: Vec<ipnet::IpNet> = r.iter().flat_map(|(lo, hi)| (*lo..=*hi)
                .map(|v| ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(v))))).collect();
            AddrSet::from_nets(&nets)
        };
        let mut b = AllowedBuilder::default();
        for (p, lo, len, r, any_port) in &entries {
            if *any_port && *p == 0 && *lo % 5 == 0 {
                b.add_any_port(addrs(r));
            } else {
                b.add_ports(proto(*p), *lo, lo + len, addrs(r));
            }
        }
        let allowed = b.finish();
        for blocks in allowed.ports.values() {
            for w in blocks.windows(2) {
                prop_assert!(w[0].hi < w[1].lo, "port blocks overlap");
            }
        }
        for (pi, port, v) in (0u8..3).flat_map(|p| (0u16..75).step_by(3).flat_map(move |port|
            (0u32..240).step_by(7).map(move |v| (p, port, v)))) {
            let a = IpAddr::V4(Ipv4Addr::from(v));
            let want = entries.iter().any(|(p, lo, len, r, any_port)| {
                let in_addrs = r.iter().any(|(l, h)| *l <= v && v <= *h);
                if *any_port && *p == 0 && *lo % 5 == 0 {
                    in_addrs
                } else {
                    *p == pi && *lo <= port && port <= lo + len && in_addrs
                }
            });
            prop_assert_eq!(allowed.allows(a, proto(pi), port), want);
        }
    }
}

/// Pods that the same policies isolate share one isolation in the plan and one pair of sets in
/// the ruleset; one whose ingress named port resolves to another number gets its own sets.
#[test]
fn replicas_share_their_isolation_and_sets_unless_a_named_port_differs() {
    let replica = |name: &str, ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: web}}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: {port}}}]}}]}}\n\
             status: {{podIP: {ip}}}\n---\n"
        )
    };
    let yaml = format!(
        "{}{}{}{}",
        replica("w0", "10.0.0.1", 8080),
        replica("w1", "10.0.0.2", 8080),
        replica("w2", "10.0.0.3", 9090),
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}]}]
"#
    );
    let (_, p) = plan(&yaml);
    let iso = |pod: &str| {
        p.endpoints[&ObjectKey::new("x", pod)]
            .ingress
            .clone()
            .expect("isolated")
    };
    assert!(
        Arc::ptr_eq(&iso("w0"), &iso("w1")),
        "one copy for equal isolations"
    );
    assert!(!Arc::ptr_eq(&iso("w0"), &iso("w2")));
    let rs = Ruleset::build(&p, Options::default());
    let used = |pod: &str| -> Vec<&str> {
        rs.pods[&format!("ing/x/{pod}")]
            .chain
            .rules
            .iter()
            .filter_map(|r| r.network_policy_set())
            .collect()
    };
    assert_eq!(used("w0"), used("w1"));
    assert!(used("w0").iter().all(|s| rs.shared_sets.contains_key(*s)));
    assert!(
        used("w2").iter().all(|s| s.ends_with("/x/w2")),
        "{:?}",
        used("w2")
    );
    // Each still enforces its own port.
    assert!(allowed(&p, "x/w2", "x/w0", 8080, Protocol::Tcp));
    assert!(!allowed(&p, "x/w0", "x/w2", 8080, Protocol::Tcp));
    assert!(allowed(&p, "x/w0", "x/w2", 9090, Protocol::Tcp));
}
