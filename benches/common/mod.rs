//! The synthetic cluster every benchmark uses: 10,000 pods in 500 namespaces (20 each) over
//! 100 nodes, 2,000 policies of the shapes seen in real clusters (default deny, same-app
//! ingress on a named port, team ingress through a namespace selector, egress to a team's
//! namespaces and to an ipBlock with an except).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use nftpol::policy::model::{
    ClusterState, ContainerPort, Labels, Namespace, NamespaceScope, ObjectKey, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Requirement, Rule, Selector,
};

pub const NAMESPACES: usize = 500;
pub const PODS_PER_NS: usize = 20;
pub const NODES: usize = 100;
pub const APPS: usize = 5;
pub const TEAMS: usize = 20;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn eq(k: &str, v: String) -> Selector {
    Selector {
        requirements: vec![Requirement::In(k.into(), vec![v])],
    }
}

pub fn pod(ns: usize, i: usize) -> Pod {
    let n = ns * PODS_PER_NS + i;
    Pod {
        key: ObjectKey::new(format!("ns-{ns}"), format!("pod-{i}")),
        labels: std::sync::Arc::new(labels(&[
            ("app", format!("app-{}", i % APPS)),
            ("version", format!("v{}", i % 3)),
        ])),
        node: Some(format!("node-{}", n % NODES)),
        ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + n as u32 + 1))],
        ports: vec![
            ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            ContainerPort {
                name: Some("metrics".into()),
                port: 9090,
                protocol: Protocol::Tcp,
            },
        ],
        host_network: false,
        phase: Some("Running".into()),
    }
}

/// Four policies per namespace, of the shapes seen in real clusters.
pub fn policies(ns: usize) -> Vec<Policy> {
    let namespace = format!("ns-{ns}");
    let key = |name: &str| ObjectKey::new(namespace.clone(), name);
    let tcp = |port: PortMatch| PortSpec {
        protocol: Protocol::Tcp,
        port,
    };
    vec![
        Policy {
            key: key("default-deny"),
            pod_selector: Selector::everything(),
            isolates_ingress: true,
            isolates_egress: true,
            ingress: vec![],
            egress: vec![],
            log_allowed: false,
        },
        Policy {
            key: key("allow-same-app"),
            pod_selector: eq("app", format!("app-{}", ns % APPS)),
            isolates_ingress: true,
            isolates_egress: false,
            ingress: vec![Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: NamespaceScope::Own(namespace.clone()),
                    pods: eq("app", format!("app-{}", (ns + 1) % APPS)),
                }]),
                ports: Some(vec![tcp(PortMatch::Named("http".into()))]),
            }],
            egress: vec![],
            log_allowed: false,
        },
        Policy {
            key: key("allow-team"),
            pod_selector: Selector::everything(),
            isolates_ingress: true,
            isolates_egress: false,
            ingress: vec![Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: NamespaceScope::Selected(eq("team", format!("t{}", ns % TEAMS))),
                    pods: eq("app", "app-0".into()),
                }]),
                ports: Some(vec![tcp(PortMatch::Range(8080, 8090))]),
            }],
            egress: vec![],
            log_allowed: false,
        },
        Policy {
            key: key("egress"),
            pod_selector: Selector::everything(),
            isolates_ingress: false,
            isolates_egress: true,
            ingress: vec![],
            egress: vec![
                Rule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: NamespaceScope::Selected(eq(
                            "team",
                            format!("t{}", ns % TEAMS),
                        )),
                        pods: Selector::everything(),
                    }]),
                    ports: Some(vec![tcp(PortMatch::Named("metrics".into()))]),
                },
                Rule {
                    peers: Some(vec![Peer::IpBlock {
                        cidr: "10.0.0.0/8".parse().expect("cidr"),
                        except: vec!["10.0.0.0/20".parse().expect("cidr")],
                    }]),
                    ports: Some(vec![tcp(PortMatch::Range(443, 443))]),
                },
            ],
            log_allowed: false,
        },
    ]
}

pub fn cluster() -> ClusterState {
    let mut state = ClusterState::default();
    for ns in 0..NAMESPACES {
        state.namespaces.push(Namespace {
            name: format!("ns-{ns}"),
            labels: labels(&[
                ("kubernetes.io/metadata.name", format!("ns-{ns}")),
                ("team", format!("t{}", ns % TEAMS)),
            ]),
            audit: false,
        });
        state.pods.extend((0..PODS_PER_NS).map(|i| pod(ns, i)));
        state.policies.extend(policies(ns));
    }
    state
}
