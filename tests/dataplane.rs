//! Dataplane tests against the real kernel, each in its own network namespace (run as root):
//! the rendered text equals `nft list table inet nftpol` after programming over netlink, a
//! rejected batch changes nothing and names its object, drift is detected and repaired,
//! incremental updates converge to the full ruleset, a large plan loads in one transaction,
//! and a TCP smoke test through a routed node.

mod support;

use serde_json::json;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nftpol::dataplane::ruleset::{AddrRange, Element, Family, Rule as NftRule};
use nftpol::dataplane::{Dataplane, DataplaneError, Options, Ruleset, render};
use nftpol::policy::compile::{Endpoint, Isolation, NodePlan, Scope, compile};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::intervals::{AddrSet, Allowed, AllowedBuilder};
use nftpol::policy::model::{
    ClusterState, ContainerPort, Namespace, NamespaceScope, ObjectKey, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Requirement, Rule, Selector,
};
use support::{Netns, normalize};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> AddrSet {
    let nets: Vec<ipnet::IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
    AddrSet::from_nets(nets.iter())
}

fn iso_of(ns: &str, policy: &str, allowed: Allowed) -> std::sync::Arc<Isolation> {
    std::sync::Arc::new(Isolation {
        policies: vec![ObjectKey::new(ns, policy)],
        rules: vec![],
        allowed,
        log_allowed: false,
    })
}

fn iso(allowed: Allowed) -> std::sync::Arc<Isolation> {
    std::sync::Arc::new(Isolation {
        policies: vec![ObjectKey::new("default", "p")],
        rules: vec![],
        allowed,
        log_allowed: false,
    })
}

fn endpoint(
    ns: &str,
    name: &str,
    ips: &[&str],
    ingress: Option<Allowed>,
    egress: Option<Allowed>,
) -> Endpoint {
    Endpoint {
        pod: ObjectKey::new(ns, name),
        ips: ips.iter().map(|s| ip(s)).collect(),
        // A policy per pod: each has sets of its own, as pods of different apps do.
        ingress: ingress.map(|a| iso_of(ns, name, a)),
        egress: egress.map(|a| iso_of(ns, name, a)),
        audit: false,
        cluster_ingress: Default::default(),
        cluster_egress: Default::default(),
    }
}

/// The `addr . proto . port` set a pod chain (`ing/<ns>/<pod>`) looks up for IPv4: shared by
/// the pods its policies isolate, so named after them.
fn tuple_set(rs: &Ruleset, chain: &str) -> String {
    rs.pods[chain]
        .chain
        .rules
        .iter()
        .find_map(|r| match r {
            NftRule::TupleReturn {
                set,
                family: Family::V4,
                ..
            } => Some(set.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{chain} looks up no IPv4 tuple set"))
}

fn plan(endpoints: Vec<Endpoint>) -> NodePlan {
    NodePlan {
        endpoints: endpoints.into_iter().map(|e| (e.pod.clone(), e)).collect(),
        skipped: BTreeMap::new(),
    }
}

/// IPv4 only: any-port peers, a port range, a CIDR with a hole, several protocols.
fn plan_v4() -> NodePlan {
    let mut b = AllowedBuilder::default();
    b.add_any_port(nets(&["10.1.0.5/32", "192.168.0.0/16"]));
    b.add_ports(Protocol::Tcp, 80, 80, nets(&["10.0.0.0/8"]));
    b.add_ports(Protocol::Tcp, 8000, 8100, nets(&["10.2.3.4/32"]));
    b.add_ports(
        Protocol::Udp,
        53,
        53,
        AddrSet::from_ip_block(
            &"0.0.0.0/0".parse().unwrap(),
            &["10.0.0.0/8".parse().unwrap()],
        ),
    );
    b.add_ports(Protocol::Sctp, 9000, 9000, nets(&["10.3.0.0/24"]));
    let api = b.finish();
    let mut e = AllowedBuilder::default();
    e.add_ports(Protocol::Udp, 53, 53, nets(&["10.96.0.10/32"]));
    let egress = e.finish();
    let mut p = plan(vec![
        endpoint("prod", "api", &["10.244.1.10"], Some(api), None),
        endpoint(
            "prod",
            "web",
            &["10.244.1.11"],
            Some(Allowed::default()),
            Some(egress),
        ),
        endpoint("prod", "free", &["10.244.1.12"], None, None),
        endpoint(
            "dev",
            "deny-all",
            &["10.244.1.13"],
            Some(Allowed::default()),
            Some(Allowed::default()),
        ),
        // The longest names Kubernetes allows (63 + 253): hashed down to nft's 255 bytes.
        endpoint(
            &"n".repeat(63),
            &format!("web.v1.{}", "p".repeat(246)),
            &["10.244.1.14"],
            Some(Allowed::default()),
            None,
        ),
    ]);
    // `nftpol.io/log` on two pods: a short and a truncated log prefix.
    for (ns, name) in [
        ("prod".to_string(), "web".to_string()),
        ("n".repeat(63), format!("web.v1.{}", "p".repeat(246))),
    ] {
        let e = p.endpoints.get_mut(&ObjectKey::new(ns, name)).expect("pod");
        for iso in [e.ingress.as_mut(), e.egress.as_mut()]
            .into_iter()
            .flatten()
        {
            std::sync::Arc::make_mut(iso).log_allowed = true;
        }
    }
    p
}

/// Dual stack and IPv6 only, with allow-all, ranges that are not prefixes, and full port ranges.
fn plan_v6() -> NodePlan {
    let mut b = AllowedBuilder::default();
    b.add_any_port(nets(&["fd00:10::/64", "10.9.0.0/16"]));
    b.add_ports(
        Protocol::Tcp,
        443,
        443,
        nets(&["2001:db8::/32", "fd00:20::7/128"]),
    );
    b.add_ports(Protocol::Udp, 0, 65535, nets(&["fd00:30::/48"]));
    let dual = b.finish();
    let mut all = AllowedBuilder::default();
    all.add_any_port(AddrSet::all());
    let everything = all.finish();
    let mut r = AllowedBuilder::default();
    let range = AddrSet::from_addrs((1..=5).map(|i| ip(&format!("fd00:40::{i}"))));
    r.add_ports(Protocol::Tcp, 1000, 1999, range);
    r.add_ports(
        Protocol::Tcp,
        2000,
        2000,
        AddrSet::from_addrs((3..=9).map(|i| ip(&format!("10.5.5.{i}")))),
    );
    let ranges = r.finish();
    plan(vec![
        endpoint(
            "six",
            "dual",
            &["10.244.2.10", "fd00:244::10"],
            Some(dual.clone()),
            Some(dual),
        ),
        endpoint(
            "six",
            "only6",
            &["fd00:244::11"],
            Some(everything.clone()),
            None,
        ),
        endpoint(
            "six",
            "ranges",
            &["10.244.2.12", "fd00:244::12"],
            None,
            Some(ranges),
        ),
        endpoint("six", "all", &["10.244.2.13"], Some(everything), None),
    ])
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Through the compiler: named ports resolved per destination pod, namespace selectors.
fn plan_compiled(node: &str) -> NodePlan {
    let pod =
        |ns: &str, name: &str, app: &str, node: &str, ipaddr: &str, ports: Vec<ContainerPort>| {
            Pod {
                key: ObjectKey::new(ns, name),
                labels: std::sync::Arc::new(labels(&[("app", app)])),
                node: Some(node.to_string()),
                ips: vec![ip(ipaddr)],
                ports,
                host_network: false,
                phase: Some("Running".into()),
            }
        };
    let http = |p: u16| ContainerPort {
        name: Some("http".into()),
        port: p,
        protocol: Protocol::Tcp,
    };
    let state = ClusterState {
        namespaces: vec![
            Namespace {
                name: "shop".into(),
                labels: labels(&[("team", "shop")]),
                audit: false,
            },
            Namespace {
                name: "ops".into(),
                labels: labels(&[("team", "ops")]),
                audit: false,
            },
        ],
        pods: vec![
            pod(
                "shop",
                "front",
                "front",
                node,
                "10.244.3.10",
                vec![http(8080)],
            ),
            pod(
                "shop",
                "cart",
                "cart",
                node,
                "10.244.3.11",
                vec![http(9090)],
            ),
            pod("shop", "db", "db", "other", "10.244.4.10", vec![]),
            pod("ops", "prom", "prom", "other", "10.244.4.11", vec![]),
        ],
        policies: vec![
            Policy {
                key: ObjectKey::new("shop", "http-from-shop"),
                pod_selector: Selector {
                    requirements: vec![Requirement::In(
                        "app".into(),
                        vec!["front".into(), "cart".into()],
                    )],
                },
                isolates_ingress: true,
                isolates_egress: false,
                ingress: vec![
                    Rule {
                        peers: Some(vec![Peer::Pods {
                            namespaces: NamespaceScope::Own("shop".into()),
                            pods: Selector::everything(),
                        }]),
                        ports: Some(vec![PortSpec {
                            protocol: Protocol::Tcp,
                            port: PortMatch::Named("http".into()),
                        }]),
                    },
                    Rule {
                        peers: Some(vec![Peer::Pods {
                            namespaces: NamespaceScope::Selected(Selector {
                                requirements: vec![Requirement::In(
                                    "team".into(),
                                    vec!["ops".into()],
                                )],
                            }),
                            pods: Selector::everything(),
                        }]),
                        ports: None,
                    },
                ],
                egress: vec![],
                log_allowed: false,
            },
            Policy {
                key: ObjectKey::new("shop", "cart-egress"),
                pod_selector: Selector {
                    requirements: vec![Requirement::In("app".into(), vec!["cart".into()])],
                },
                isolates_ingress: false,
                isolates_egress: true,
                ingress: vec![],
                egress: vec![Rule {
                    peers: Some(vec![
                        Peer::Pods {
                            namespaces: NamespaceScope::Own("shop".into()),
                            pods: Selector {
                                requirements: vec![Requirement::In(
                                    "app".into(),
                                    vec!["db".into()],
                                )],
                            },
                        },
                        Peer::IpBlock {
                            cidr: "10.96.0.0/12".parse().unwrap(),
                            except: vec!["10.96.0.1/32".parse().unwrap()],
                        },
                    ]),
                    ports: Some(vec![
                        PortSpec {
                            protocol: Protocol::Tcp,
                            port: PortMatch::Range(5432, 5440),
                        },
                        PortSpec {
                            protocol: Protocol::Udp,
                            port: PortMatch::Range(53, 53),
                        },
                    ]),
                }],
                log_allowed: false,
            },
        ],
        ..Default::default()
    };
    compile(
        &ClusterIndex::from_state(&state),
        &Scope::Node(node.to_string()),
    )
}

/// `plan` as if every isolating policy carried `nftpol.io/log: "true"`.
fn log_allowed(mut plan: NodePlan) -> NodePlan {
    for e in plan.endpoints.values_mut() {
        for iso in [e.ingress.as_mut(), e.egress.as_mut()]
            .into_iter()
            .flatten()
        {
            std::sync::Arc::make_mut(iso).log_allowed = true;
        }
    }
    plan
}

/// A node with ClusterNetworkPolicies of both tiers (Accept, Deny, Pass, protocols, an
/// ingress named port) beside a NetworkPolicy, compiled from manifests; `extra` pods are added
/// (peers of the rules).
fn plan_cluster(extra: &[(&str, &str)]) -> NodePlan {
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
    let pod = |n: &str, name: &str, ips: &[&str], node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": n, "labels": {"app": name}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                        "ports": [{"containerPort": 8080, "name": "web"}]}]},
               "status": {"phase": "Running", "podIP": ips[0],
                          "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
    };
    let sel = |n: &str| json!({"matchLabels": {"kubernetes.io/metadata.name": n}});
    let mut docs = vec![
        ns("shop"),
        ns("ops"),
        pod("shop", "web", &["10.1.0.5", "fd00::5"], "n1"),
        pod("shop", "db", &["10.1.0.6"], "n1"),
        pod("ops", "mon", &["10.2.0.7"], "n2"),
        json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
               "metadata": {"name": "admin"},
               "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": sel("shop")},
                        "ingress": [
                            {"name": "pass-ops", "action": "Pass", "from": [{"namespaces": sel("ops")}]},
                            {"action": "Deny", "from": [{"namespaces": {}}],
                             "protocols": [{"destinationNamedPort": "web"},
                                           {"tcp": {"destinationPort": {"range": {"start": 9000, "end": 9100}}}}]},
                            {"action": "Accept", "from": [{"pods": {"namespaceSelector": sel("shop"), "podSelector": {}}}]}],
                        "egress": [
                            {"name": "deny-net", "action": "Deny", "to": [{"networks": ["192.168.0.0/16", "fd00:1::/64"]}],
                             "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}]}}),
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
               "metadata": {"name": "default"},
               "spec": {"subject": {"namespaces": {}},
                        "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "db", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}}),
    ];
    for (n, ip) in extra {
        docs.push(pod("ops", n, &[ip], "n2"));
    }
    let loaded = nftpol::source::manifest::load_values("cluster", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    compile(
        &ClusterIndex::from_state(&loaded.state),
        &Scope::Node("n1".into()),
    )
}

#[test]
fn cluster_policy_sets_follow_pods_incrementally() {
    let options = Options {
        nflog_group: Some(9),
        ..Options::default()
    };
    let steps = [
        Ruleset::build(&plan_cluster(&[]), options),
        Ruleset::build(&plan_cluster(&[("mon2", "10.2.0.8")]), options),
        Ruleset::build(&plan_cluster(&[("mon3", "10.2.0.9")]), options),
    ];
    let listing = assert_diffs_converge(&steps);
    // The pod that joined the peers is in the decision maps, the one that left is not.
    assert!(listing.contains("10.2.0.9 : goto cbidrop/"), "{listing}");
    assert!(!listing.contains("10.2.0.8"), "{listing}");
}

fn rulesets() -> Vec<(&'static str, Ruleset)> {
    let police = Options {
        police_node_traffic: true,
        ..Options::default()
    };
    vec![
        (
            "empty",
            Ruleset::build(&NodePlan::default(), Options::default()),
        ),
        ("v4", Ruleset::build(&plan_v4(), Options::default())),
        ("v4-police", Ruleset::build(&plan_v4(), police)),
        (
            "v4-logs",
            Ruleset::build(
                &log_allowed(plan_v4()),
                Options {
                    nflog_group: Some(100),
                    ..Options::default()
                },
            ),
        ),
        (
            "compiled-audit",
            Ruleset::build(
                &log_allowed(plan_compiled("n1")),
                Options {
                    audit: true,
                    nflog_group: Some(7),
                    ..Options::default()
                },
            ),
        ),
        ("v6", Ruleset::build(&plan_v6(), Options::default())),
        (
            "compiled",
            Ruleset::build(&plan_compiled("n1"), Options::default()),
        ),
        ("v4-unknown", guarded(&plan_v4(), false, &[])),
        ("v6-police-unknown", guarded(&plan_v6(), true, &[])),
        (
            "unknown-everything",
            guarded(&NodePlan::default(), false, &[]),
        ),
        (
            "cluster",
            Ruleset::build(&plan_cluster(&[]), Options::default()),
        ),
        (
            "cluster-audit-logs",
            Ruleset::build(
                &plan_cluster(&[]),
                Options {
                    audit: true,
                    nflog_group: Some(5),
                    ..Options::default()
                },
            ),
        ),
    ]
}

const POD_CIDRS: [&str; 2] = ["10.1.0.0/16", "fd00::/64"];

/// `--default-deny-unknown` over the pod CIDRs: the plan's endpoints and `others` are known.
fn guarded(plan: &NodePlan, police: bool, others: &[&str]) -> Ruleset {
    let mut rs = Ruleset::build(
        plan,
        Options {
            police_node_traffic: police,
            default_deny_unknown: true,
            strict: true,
            ..Options::default()
        },
    );
    let cidrs: Vec<ipnet::IpNet> = POD_CIDRS.iter().map(|c| c.parse().unwrap()).collect();
    let known: Vec<IpAddr> = plan
        .endpoints
        .values()
        .flat_map(|e| e.ips.iter().copied())
        .chain(others.iter().map(|s| ip(s)))
        .collect();
    rs.guard_unknown(&cidrs, known);
    rs
}

/// Loads `steps[0]` whole into a fresh namespace, then applies each next step as a diff: every
/// step must be incremental, leave no drift, and list as `render` says. Returns the last
/// listing.
fn assert_diffs_converge(steps: &[Ruleset]) -> String {
    let ns = Netns::new();
    let rs = steps.to_vec();
    let listings: Vec<(String, String)> = ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&rs[0]).unwrap();
        rs.windows(2)
            .map(|w| {
                let report = dp.apply_diff(&w[0], &w[1]).unwrap();
                assert_eq!(dp.check_drift().unwrap(), None, "no drift after the diff");
                let listing = support::run("nft", &["list", "table", "inet", "nftpol"]);
                (format!("{:?}", report.kind), listing)
            })
            .collect()
    });
    for (i, (kind, listing)) in listings.iter().enumerate() {
        assert_eq!(kind, "Diff", "step {i} stays incremental");
        assert_eq!(
            normalize(listing),
            normalize(&render(&steps[i + 1])),
            "step {i}"
        );
    }
    listings.last().map(|(_, l)| l.clone()).unwrap_or_default()
}

#[test]
fn unknown_sets_follow_pods_incrementally() {
    let steps = [
        guarded(&plan_v4(), false, &[]),
        guarded(&plan_v4(), false, &["10.1.2.3", "10.1.2.5", "fd00::7"]),
        guarded(&plan_v4(), false, &["10.1.2.4"]),
        guarded(&NodePlan::default(), false, &["10.1.0.0", "10.1.255.255"]),
    ];
    assert!(
        render(&steps[1]).contains("ip saddr @unknown_v4 drop"),
        "{}",
        render(&steps[1])
    );
    assert_diffs_converge(&steps);
}

fn apply_full_in(ns: &Netns, rs: &Ruleset) {
    let rs = rs.clone();
    ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.apply_full(&rs).expect("apply_full");
    });
}

#[test]
fn render_equals_kernel_listing() {
    for (name, rs) in rulesets() {
        let ns = Netns::new();
        apply_full_in(&ns, &rs);
        let listed = ns.list_table();
        let rendered = render(&rs);
        match name {
            "v4" => assert!(!rendered.contains(" log "), "no NFLOG group, no logs"),
            "v4-logs" => {
                assert!(rendered.contains(&format!(
                    r#"@{} log prefix "nftpol allow egress" group 100 return"#,
                    tuple_set(&rs, "egr/prod/web")
                )));
                assert!(rendered.contains(
                    r#"limit rate 10/second burst 20 packets log prefix "nftpol drop ingress" group 100"#
                ));
                assert!(!rendered.contains("counter packets 0 bytes 0 return"));
            }
            "compiled-audit" => {
                assert!(rendered.contains(r#"log prefix "nftpol audit egress" group 7"#));
                assert!(rendered.contains("counter packets 0 bytes 0 return"));
                assert!(
                    !rendered.contains("counter packets 0 bytes 0 drop"),
                    "no pod chain drops in audit mode"
                );
            }
            _ => {}
        }
        assert_eq!(
            listed, rendered,
            "plan {name}: kernel listing differs from render"
        );
        // Render is also valid nft input that produces the same table.
        let ns2 = Netns::new();
        let path = std::env::temp_dir().join(format!("{}.nft", ns2.name));
        std::fs::write(&path, nftpol::dataplane::render::render_script(&rs)).unwrap();
        ns2.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            ns2.list_table(),
            rendered,
            "plan {name}: nft -f of render differs"
        );
    }
}

#[test]
fn replace_is_idempotent_and_checks_clean() {
    let ns = Netns::new();
    let rs = Ruleset::build(&plan_v6(), Options::default());
    let rs2 = rs.clone();
    ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&rs2).unwrap();
        dp.apply_full(&rs2).unwrap();
        assert_eq!(dp.check_drift().unwrap(), None);
    });
    assert_eq!(ns.list_table(), render(&rs));
}

/// Two tuples whose address ranges overlap on the same protocol and port: pipapo rejects it.
fn with_overlap(mut rs: Ruleset) -> Ruleset {
    let name = tuple_set(&rs, "ing/prod/api");
    let set = rs.shared_sets.get_mut(&name).expect("set");
    set.elements.push(Element::Tuple {
        addrs: AddrRange {
            lo: ip("10.1.1.1"),
            hi: ip("10.1.1.1"),
        },
        protocol: Protocol::Tcp,
        ports: (80, 80),
    });
    rs
}

#[test]
fn rejected_batch_changes_nothing_and_names_the_object() {
    let ns = Netns::new();
    let good = Ruleset::build(&plan_v4(), Options::default());
    let bad_elem = with_overlap(good.clone());
    let mut bad_jump = Ruleset::build(&plan_v6(), Options::default());
    bad_jump.maps[0]
        .entries
        .insert(ip("10.244.9.9"), "ing/no/such-chain".into());
    let (g, be, bj) = (good.clone(), bad_elem, bad_jump);
    let (e1, e2, e3) = ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&g).unwrap();
        let e1 = dp.apply_full(&be).expect_err("overlap must be rejected");
        let e2 = dp
            .apply_full(&bj)
            .expect_err("jump to a missing chain must be rejected");
        // A diff carrying the bad element is rejected too, and the last good state stays known.
        let e3 = dp
            .apply_diff(&g, &with_overlap(g.clone()))
            .expect_err("diff overlap");
        assert_eq!(dp.last_applied(), Some(&g));
        assert_eq!(dp.stats().failures, 3);
        (e1, e2, e3)
    });
    assert_eq!(
        ns.list_table(),
        render(&good),
        "previous ruleset must stay in force"
    );
    let overlap = format!(
        "set {} element 10.1.1.1 . tcp . 80",
        tuple_set(&good, "ing/prod/api")
    );
    for (e, want) in [
        (&e1, overlap.as_str()),
        (
            &e2,
            "map ingress_v4 element 10.244.9.9 : jump ing/no/such-chain",
        ),
        (&e3, overlap.as_str()),
    ] {
        eprintln!("rejected as expected: {e}");
        assert!(matches!(e, DataplaneError::Rejected(_)), "{e}");
        let names: Vec<String> = e.rejected().iter().map(|r| r.object.clone()).collect();
        assert!(
            names.iter().any(|n| n.contains(want)),
            "error {e} should name {want:?}: {names:?}"
        );
    }
}

#[test]
fn drift_is_detected_and_repaired() {
    let ns = Netns::new();
    let rs = Ruleset::build(&plan_v4(), Options::default());
    let rendered = render(&rs);
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Option<String>>();
    let rs2 = rs.clone();
    // One dataplane for the whole test, driven from this thread through channels.
    let worker = std::thread::spawn(move || {
        support::enter(&path);
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&rs2).unwrap();
        done_tx
            .send(dp.check_drift().unwrap().map(|d| d.to_string()))
            .unwrap();
        for cmd in rx {
            let drift = match cmd {
                "check" => dp.check_drift().unwrap(),
                _ => dp.repair_drift().unwrap(),
            };
            done_tx.send(drift.map(|d| d.to_string())).unwrap();
        }
    });
    let ask = |cmd: &'static str| {
        tx.send(cmd).unwrap();
        done_rx.recv().unwrap()
    };
    assert_eq!(done_rx.recv().unwrap(), None, "fresh table has no drift");
    // The pod chain rewritten with the same expressions but one attribute changed: a verdict
    // (`accept` for `return`), a lookup inverted (`!=`). Only a structural comparison of the
    // expressions' attributes sees these.
    let api = &rs.pods["ing/prod/api"].chain;
    let api_set = tuple_set(&rs, "ing/prod/api");
    let rewritten = |change: &dyn Fn(String) -> String| {
        let mut cmd = "flush chain inet nftpol ing/prod/api".to_string();
        for (i, rule) in api.rules.iter().enumerate() {
            let text = nftpol::dataplane::render::rule_text(rule);
            let text = if i == 0 { change(text) } else { text };
            cmd.push_str(&format!("; add rule inet nftpol ing/prod/api {text}"));
        }
        cmd
    };
    let other_verdict = rewritten(&|t| t.replace(" return", " accept"));
    let inverted = rewritten(&|t| t.replace("ip saddr @", "ip saddr != @"));
    assert!(other_verdict.contains("accept") && inverted.contains("!= @"));
    for damage in [
        vec!["nft", other_verdict.as_str()],
        vec!["nft", inverted.as_str()],
        vec!["nft", "delete", "table", "inet", "nftpol"],
        vec!["nft", "flush", "ruleset"],
        vec![
            "nft",
            "delete",
            "element",
            "inet",
            "nftpol",
            &api_set,
            "{ 10.2.3.4 . tcp . 8000-8100 }",
        ],
        vec![
            "nft",
            "add",
            "element",
            "inet",
            "nftpol",
            "ingress_v4",
            "{ 10.244.1.99 : jump ing/prod/api }",
        ],
        vec!["nft", "flush", "chain", "inet", "nftpol", "forward"],
        // Same rule count, different content.
        vec![
            "nft",
            "flush chain inet nftpol ing/prod/api; add rule inet nftpol ing/prod/api accept; \
             add rule inet nftpol ing/prod/api accept; add rule inet nftpol ing/prod/api accept",
        ],
    ] {
        ns.exec(&damage);
        let found = ask("check");
        assert!(found.is_some(), "{damage:?} must be detected");
        let repaired = ask("repair");
        assert!(repaired.is_some());
        assert_eq!(ns.list_table(), rendered, "after repairing {damage:?}");
        assert_eq!(ask("check"), None, "clean after repairing {damage:?}");
    }
    drop(tx);
    worker.join().unwrap();
}

fn mutate(p: &NodePlan) -> NodePlan {
    let mut p = p.clone();
    // Remove a pod, add a pod, change elements, move an IP, toggle a direction.
    p.endpoints.remove(&ObjectKey::new("dev", "deny-all"));
    let mut b = AllowedBuilder::default();
    b.add_ports(Protocol::Tcp, 22, 22, nets(&["10.7.0.0/16"]));
    let new = endpoint("dev", "newbie", &["10.244.1.13"], Some(b.finish()), None);
    p.endpoints.insert(new.pod.clone(), new);
    if let Some(api) = p.endpoints.get_mut(&ObjectKey::new("prod", "api")) {
        let mut b = AllowedBuilder::default();
        b.add_any_port(nets(&["10.1.0.5/32", "192.168.0.0/17"]));
        b.add_ports(Protocol::Tcp, 80, 81, nets(&["10.0.0.0/8"]));
        b.add_ports(Protocol::Udp, 53, 53, nets(&["10.0.0.0/8"]));
        api.ingress = Some(iso(b.finish()));
        api.ips = vec![ip("10.244.1.20")];
    }
    if let Some(web) = p.endpoints.get_mut(&ObjectKey::new("prod", "web")) {
        web.egress = None;
    }
    if let Some(free) = p.endpoints.get_mut(&ObjectKey::new("prod", "free")) {
        free.egress = Some(iso(Allowed::default()));
        // Its namespace goes to audit mode: the chain's last rule changes.
        free.audit = true;
    }
    p
}

#[test]
fn diff_converges_to_full() {
    let base = plan_v4();
    let steps = [
        base.clone(),
        mutate(&base),
        base.clone(),
        plan_compiled("n1"),
        NodePlan::default(),
        mutate(&base),
    ];
    let logged = Options {
        nflog_group: Some(100),
        ..Options::default()
    };
    let rulesets: Vec<Ruleset> = steps.iter().map(|p| Ruleset::build(p, logged)).collect();
    let last = assert_diffs_converge(&rulesets);
    // And the same plan loaded fresh lists identically (modulo creation order).
    let fresh = Netns::new();
    apply_full_in(&fresh, rulesets.last().unwrap());
    assert_eq!(normalize(&fresh.list_table()), normalize(&last));
}

/// A pod allowed from `peers` peer addresses on port 80 (one tuple element each), next to a
/// pod that does not change.
fn plan_with_peers(peers: usize) -> NodePlan {
    let addrs: Vec<IpAddr> = (0..peers)
        .map(|i| {
            IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                9,
                (i / 250) as u8,
                (i % 250) as u8 + 1,
            ))
        })
        .collect();
    let mut b = AllowedBuilder::default();
    b.add_ports(Protocol::Tcp, 80, 80, AddrSet::from_addrs(addrs));
    let mut other = AllowedBuilder::default();
    other.add_ports(Protocol::Udp, 53, 53, nets(&["10.0.0.0/8"]));
    plan(vec![
        endpoint("x", "server", &["10.1.1.1"], Some(b.finish()), None),
        endpoint("x", "other", &["10.1.1.2"], Some(other.finish()), None),
    ])
}

/// Deleting many elements one by one is slow in the kernel (pipapo rebuilds per element), so
/// the diff replaces such a pod direction whole, in the same transaction: the result must be
/// exactly what a full apply gives, without drift, and still an incremental transaction.
#[test]
fn mass_deletions_rebuild_the_pod_and_converge() {
    let steps: Vec<Ruleset> = [600, 10, 12, 600]
        .iter()
        .map(|n| Ruleset::build(&plan_with_peers(*n), Options::default()))
        .collect();
    assert_diffs_converge(&steps);
}

#[test]
fn diff_falls_back_to_full_on_shape_change() {
    let ns = Netns::new();
    let a = Ruleset::build(&plan_v4(), Options::default());
    let b = Ruleset::build(
        &plan_v4(),
        Options {
            police_node_traffic: true,
            ..Options::default()
        },
    );
    let (a2, b2) = (a.clone(), b.clone());
    let kind = ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&a2).unwrap();
        dp.apply(&b2).unwrap().kind
    });
    assert_eq!(format!("{kind:?}"), "Full");
    assert_eq!(ns.list_table(), render(&b));
}

/// 500 isolated pods with 10 tuples each: 5,000 concatenated interval elements, 2,000 sets,
/// 500 chains and a 500-entry vmap. Checks the transport traps (one sendmsg, buffer sizes, no
/// per-message ACKs); a split batch would be silently aborted by the kernel.
#[test]
fn large_plan_loads_in_one_transaction() {
    let mut eps = Vec::new();
    for i in 0..500u32 {
        let mut b = AllowedBuilder::default();
        for j in 0..10u32 {
            let a = format!("10.{}.{}.0/24", (i * 7 + j) % 250, j);
            b.add_ports(
                Protocol::Tcp,
                1000 + (j * 10) as u16,
                1000 + (j * 10) as u16 + (j % 5) as u16,
                nets(&[&a]),
            );
        }
        let ipaddr = format!("10.250.{}.{}", i / 250, i % 250 + 1);
        eps.push(endpoint(
            "bulk",
            &format!("pod-{i}"),
            &[&ipaddr],
            Some(b.finish()),
            None,
        ));
    }
    let rs = Ruleset::build(&plan(eps), Options::default());
    let tuples: usize = rs.sets().map(|s| s.elements.len()).sum();
    assert_eq!(tuples, 5000);
    let ns = Netns::new();
    let rs2 = rs.clone();
    let (full, replace, add, next) = ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        let full = dp.apply_full(&rs2).unwrap();
        let replace = dp.apply_full(&rs2).unwrap();
        assert_eq!(dp.check_drift().unwrap(), None);
        let mut next = rs2.clone();
        let first = tuple_set(&next, "ing/bulk/pod-0");
        let set = next.shared_sets.get_mut(&first).unwrap();
        set.elements.push(Element::Tuple {
            addrs: AddrRange {
                lo: ip("172.16.0.1"),
                hi: ip("172.16.0.1"),
            },
            protocol: Protocol::Udp,
            ports: (5353, 5353),
        });
        let add = dp.apply_diff(&rs2, &next).unwrap();
        assert_eq!(dp.check_drift().unwrap(), None);
        (full, replace, add, next)
    });
    eprintln!(
        "large plan: {} messages, {} KiB; load {:?} (build {:?}); replace {:?}; one element add {:?}",
        full.messages,
        full.bytes / 1024,
        full.kernel,
        full.build,
        replace.kernel,
        add.kernel
    );
    assert_eq!(ns.list_table(), render(&next));
}

/// Pod A -> node -> pod B, routed; B's ingress allows A on 8080 only.
#[test]
fn tcp_smoke_through_routed_node() {
    let node = Netns::new();
    let a = Netns::new();
    let b = Netns::new();
    let tag = format!("{}", std::process::id() % 10000);
    let (va, vb) = (
        format!("na{tag}{}", a.name.len() % 10),
        format!("nb{tag}{}", b.name.len() % 10),
    );
    for (pod, veth, pod_ip, gw) in [
        (&a, &va, "10.77.1.2/24", "10.77.1.1"),
        (&b, &vb, "10.77.2.2/24", "10.77.2.1"),
    ] {
        node.exec(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        let gw_cidr = format!("{gw}/24");
        node.exec(&["ip", "addr", "add", &gw_cidr, "dev", veth]);
        node.exec(&["ip", "link", "set", veth, "up"]);
        pod.exec(&["ip", "addr", "add", pod_ip, "dev", "eth0"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "route", "add", "default", "via", gw]);
    }
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    let mut ing = AllowedBuilder::default();
    ing.add_ports(Protocol::Tcp, 8080, 8080, nets(&["10.77.1.2/32"]));
    let p = plan(vec![endpoint(
        "t",
        "b",
        &["10.77.2.2"],
        Some(ing.finish()),
        None,
    )]);
    let rs = Ruleset::build(&p, Options::default());
    let rs2 = rs.clone();
    // The dataplane is built inside the node namespace and then used from this thread: its
    // socket stays bound to the node.
    let dp = node.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply_full(&rs2).unwrap();
        dp
    });

    let server = b.spawn(|| {
        let l1 = TcpListener::bind("10.77.2.2:8080").unwrap();
        let l2 = TcpListener::bind("10.77.2.2:9090").unwrap();
        (l1, l2)
    });
    let _listeners = server.join().unwrap().unwrap();
    let connect = |port: u16| {
        a.run(move || {
            let addr: SocketAddr = format!("10.77.2.2:{port}").parse().unwrap();
            TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
        })
    };
    // The allowed port answers (poll: the veths may still be settling).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connect(8080) {
        assert!(
            Instant::now() < deadline,
            "allowed connection never succeeded"
        );
    }
    assert!(!connect(9090), "denied port must be dropped");
    let counters = node.exec(&["nft", "list", "chain", "inet", "nftpol", "ing/t/b"]);
    assert_eq!(
        dp.check_drift().unwrap(),
        None,
        "counters moving is not drift"
    );
    assert!(
        !counters.contains("counter packets 0 bytes 0"),
        "the drop counted: {counters}"
    );
}

/// `apply` diffs against what it applied last; when someone changed the kernel meanwhile the
/// diff is rejected (here: deleting an element that is gone), and it replaces the table instead.
#[test]
fn apply_recovers_from_a_stale_diff_with_a_full_replace() {
    let ns = Netns::new();
    // One peer goes away: the diff deletes one element (not worth rebuilding the pod).
    let a = Ruleset::build(&plan_with_peers(600), Options::default());
    let b = Ruleset::build(&plan_with_peers(599), Options::default());
    let (a2, b2) = (a.clone(), b.clone());
    let server_set = tuple_set(&a, "ing/x/server");
    let (kind, failures) = ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.apply(&a2).unwrap();
        // The element the diff deletes is removed behind our back: the diff is stale.
        support::run(
            "nft",
            &[
                "delete",
                "element",
                "inet",
                "nftpol",
                &server_set,
                "{ 10.9.2.100 . tcp . 80 }",
            ],
        );
        let report = dp.apply(&b2).unwrap();
        (format!("{:?}", report.kind), dp.stats().failures)
    });
    assert_eq!(kind, "Full");
    assert_eq!(failures, 1, "the rejected diff is counted");
    assert_eq!(ns.list_table(), render(&b));
}

#[test]
fn delete_table_is_idempotent() {
    let ns = Netns::new();
    let rs = Ruleset::build(&plan_v4(), Options::default());
    ns.run(move || {
        let mut dp = Dataplane::new().unwrap();
        dp.delete_table().unwrap();
        dp.apply_full(&rs).unwrap();
        assert!(dp.table_exists().unwrap());
        dp.delete_table().unwrap();
        assert!(!dp.table_exists().unwrap());
        dp.delete_table().unwrap();
        assert_eq!(
            dp.check_drift().unwrap(),
            None,
            "nothing applied, nothing to compare"
        );
    });
    let (ok, out) = ns.try_exec(&["nft", "list", "tables"]);
    assert!(ok && out.trim().is_empty(), "{out}");
}

/// Issue 12, defect 4 on the kernel: an update the kernel rejects, then `nft flush ruleset`.
/// The resync puts the last committed ruleset back while the update keeps failing (before,
/// it waited for the update and left the node open).
#[test]
fn drift_is_repaired_while_an_update_keeps_failing() {
    use nftpol::dataplane::ruleset::{AddrField, Family, Rule};
    use nftpol::engine::enforce::{Desired, Enforcer};
    let ns = Netns::new();
    let good = Ruleset::build(&plan_v4(), Options::default());
    // A rule looking up a set that does not exist: the kernel rejects the whole batch.
    let mut bad = good.clone();
    bad.base_chains[0].rules.push(Rule::AddrDrop {
        family: Family::V4,
        field: AddrField::Saddr,
        set: "no-such-set".into(),
    });
    let desired = |ruleset: &Ruleset| Desired {
        ruleset: ruleset.clone(),
        fingerprint: "t".into(),
        since: Instant::now(),
        plan: None,
    };
    let (first, second) = (desired(&good), desired(&bad));
    let (generation, retrying) = ns.run(move || {
        let mut e = Enforcer::new(None).expect("enforcer");
        e.submit(first);
        e.submit(second);
        support::run("nft", &["flush", "ruleset"]);
        e.resync();
        (e.generation(), e.retry_at().is_some())
    });
    assert_eq!(generation, 1, "the bad update never commits");
    assert!(retrying, "the bad update is still being retried");
    assert_eq!(
        ns.list_table(),
        render(&good),
        "repaired to the last commit"
    );
}
