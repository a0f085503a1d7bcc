//! Kernel tests of the testbed itself, without the nftpol daemon: probes see real drops and
//! cleanup leaves nothing behind.
//!
//! Each test builds a bridged and a routed node with dual-stack pods in several subnets, checks
//! that every pair reaches every other with no ruleset, then loads a hand-written nft ruleset
//! in the node namespace that drops exactly one pair and checks that the probe reports that
//! pair, and only that pair, as denied: for TCP, UDP and SCTP (raw INITs), over IPv4 and IPv6.
//! Needs root; skips otherwise.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use nftpol::policy::model::{ClusterState, ContainerPort, ObjectKey, Pod, Protocol};
use nftpol_testbed::netns;
use nftpol_testbed::{Matrix, Mode, Testbed, cell};

fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    Pod {
        key: ObjectKey::new(ns, name),
        labels: std::sync::Arc::new(BTreeMap::from([("pod".to_owned(), name.to_owned())])),
        node: Some(nftpol_testbed::NODE_NAME.to_owned()),
        ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
        ports: vec![ContainerPort {
            name: Some("serve-80-tcp".into()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        host_network: false,
        phase: Some("Running".into()),
    }
}

/// Three pods: two in one /24 (bridged over L2 on a bridge node), one in another /24 (routed),
/// all dual-stack, plus an IPv4-only pod.
fn state() -> ClusterState {
    ClusterState {
        namespaces: vec![],
        pods: vec![
            pod("x", "a", &["10.244.1.10", "fd00::1:a"]),
            pod("x", "b", &["10.244.1.11", "fd00::1:b"]),
            pod("y", "a", &["10.244.2.10", "fd00::2:a"]),
            pod("z", "v4only", &["10.244.3.10"]),
        ],
        policies: vec![],
        ..Default::default()
    }
}

fn ip_of(state: &ClusterState, key: &str, v4: bool) -> IpAddr {
    let pod = state
        .pods
        .iter()
        .find(|p| p.key.to_string() == key)
        .expect("pod");
    *pod.ips
        .iter()
        .find(|ip| ip.is_ipv4() == v4)
        .expect("address of the family")
}

fn off_diagonal_denied(m: &Matrix) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (from, row) in &m.allowed {
        for (to, ok) in row {
            if from != to && !ok {
                out.push((from.clone(), to.clone()));
            }
        }
    }
    out
}

fn nft(bed: &Testbed, script: &str) {
    bed.node()
        .exec("nft", &["-f", "-"], Some(script))
        .expect("nft -f");
}

fn drops_are_seen(mode: Mode) {
    netns::require(&["nft"]);
    let state = state();
    let mut bed = Testbed::new(mode, &state).expect("testbed");
    bed.set_probe_timeout(Duration::from_millis(500));
    let names = bed.topology().namespace_names();
    assert_eq!(names.len(), 5);

    // No ruleset: every pair connects, for every protocol. (z/v4only only has IPv4, so the
    // dual-stack pods are probed over IPv4 only towards it and it over IPv4 towards them.)
    for protocol in Protocol::ALL {
        let m = bed.probe_matrix(80, protocol).expect("probe");
        assert_eq!(m.pods.len(), 4);
        assert!(
            off_diagonal_denied(&m).is_empty(),
            "{mode} {protocol} without rules:\n{}",
            m.to_table()
        );
        // A pod reaches itself too (over its own loopback).
        assert_eq!(cell(&m, "x/a", "x/a"), Some(true));
    }

    // Drop one pair per family and protocol: x/a -> x/b (same subnet: bridged on a bridge
    // node) over IPv4, x/b -> y/a (routed) over IPv6. Each must show up, and nothing else.
    for protocol in Protocol::ALL {
        let p = protocol.as_str().to_ascii_lowercase();
        let a4 = ip_of(&state, "x/a", true);
        let b4 = ip_of(&state, "x/b", true);
        let b6 = ip_of(&state, "x/b", false);
        let y6 = ip_of(&state, "y/a", false);
        nft(
            &bed,
            &format!(
                "table inet tbtest {{\n\
                 chain forward {{ type filter hook forward priority 0; policy accept;\n\
                 ip saddr {a4} ip daddr {b4} {p} dport 80 drop\n\
                 ip6 saddr {b6} ip6 daddr {y6} {p} dport 80 drop\n\
                 }}\n}}\n"
            ),
        );
        let m = bed.probe_matrix(80, protocol).expect("probe");
        assert_eq!(
            off_diagonal_denied(&m),
            vec![
                ("x/a".to_owned(), "x/b".to_owned()),
                ("x/b".to_owned(), "y/a".to_owned()),
            ],
            "{mode} {protocol} with two drops:\n{}",
            m.to_table()
        );

        // Another port of the same protocol is not dropped.
        let other = bed.probe_matrix(81, protocol).expect("probe");
        assert!(
            off_diagonal_denied(&other).is_empty(),
            "{mode} {protocol} port 81"
        );
        nft(&bed, "delete table inet tbtest\n");
    }

    drop(bed);
    for name in &names {
        assert!(!netns::is_listed(name), "{name} still exists after drop");
    }
    let mine = format!("{}-{}-", netns::NAME_PREFIX, std::process::id());
    let left: Vec<String> = nftpol_testbed::cleanup::live_namespaces()
        .into_iter()
        .filter(|n| names.contains(n) && n.starts_with(&mine))
        .collect();
    assert!(left.is_empty(), "still registered: {left:?}");
}

#[test]
fn bridged_node_probes_see_drops_and_cleanup_is_complete() {
    drops_are_seen(Mode::Bridge);
}

#[test]
fn routed_node_probes_see_drops_and_cleanup_is_complete() {
    drops_are_seen(Mode::Routed);
}

/// br_netfilter off on a bridge node: same-subnet traffic bypasses the inet hooks, and the
/// probe must show it (that is why the daemon has to check the sysctls).
#[test]
fn without_br_netfilter_bridged_traffic_bypasses_the_forward_hook() {
    netns::require(&["nft"]);
    let state = state();
    let mut bed = Testbed::new(Mode::Bridge, &state).expect("testbed");
    bed.set_probe_timeout(Duration::from_millis(500));
    bed.node()
        .sysctl("net.bridge.bridge-nf-call-iptables", "0")
        .expect("sysctl");
    let a4 = ip_of(&state, "x/a", true);
    let b4 = ip_of(&state, "x/b", true);
    let y4 = ip_of(&state, "y/a", true);
    nft(
        &bed,
        &format!(
            "table inet tbtest {{\n\
             chain forward {{ type filter hook forward priority 0; policy accept;\n\
             ip saddr {a4} ip daddr {{ {b4}, {y4} }} tcp dport 80 drop\n\
             }}\n}}\n"
        ),
    );
    let m = bed.probe_matrix(80, Protocol::Tcp).expect("probe");
    // x/a -> x/b is bridged: not seen by forward. x/a -> y/a is routed: dropped.
    assert_eq!(cell(&m, "x/a", "x/b"), Some(true), "\n{}", m.to_table());
    assert_eq!(cell(&m, "x/a", "y/a"), Some(false), "\n{}", m.to_table());
}
