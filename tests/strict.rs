//! `nftpol run --strict` with real packets on a testbed node: an established TCP connection is
//! cut when a change stops allowing it, one the change still allows keeps flowing, and so does
//! one the node opened (node-to-pod traffic is not policed without --police-node-traffic).
//! (Without `--strict` the connection survives: tests/enforcement.rs.) Needs root.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nftpol::policy::model::{ClusterState, ObjectKey};
use nftpol_testbed::{Mode, Testbed, echo, netns::Netns};
use serde_json::{Value, json};

mod pods;
use pods::{CLIENT, SERVER, pod};

const PORT: u16 = 7000;
const T: Duration = Duration::from_millis(700);

fn with(policies: Vec<Value>) -> Vec<Value> {
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        pod(CLIENT, &[]),
        pod(SERVER, &[]),
    ];
    objects.extend(policies);
    objects
}

/// The server's ingress: from the client on `ports`, or nothing at all when `None`.
fn server_policy(ports: Option<Value>) -> Value {
    let spec = match ports {
        Some(ports) => json!({"podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": ports}]}),
        None => json!({"podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"]}),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server", "namespace": "x"}, "spec": spec
    })
}

fn pod_ns<'a>(bed: &'a Testbed, p: (&str, &str, &str)) -> &'a Netns {
    bed.pod_netns(&ObjectKey::new(p.0, p.1))
        .expect("pod on the testbed")
}

/// A strict testbed with an echo server on the server pod.
fn strict_testbed() -> Option<Testbed> {
    nftpol_testbed::netns::require(&[]);
    let loaded =
        nftpol::source::manifest::load_values("cluster", with(vec![])).expect("cluster loads");
    let state: ClusterState = loaded.state;
    let mut bed = Testbed::new(Mode::Bridge, &state).expect("testbed");
    bed.set_daemon_args(vec!["--strict".into()]);
    let addr = SocketAddr::new(SERVER.2.parse().expect("ip"), PORT);
    echo::serve(pod_ns(&bed, SERVER), addr).expect("echo server");
    Some(bed)
}

fn open_connection(bed: &Testbed) -> TcpStream {
    let addr = SocketAddr::new(SERVER.2.parse().expect("ip"), PORT);
    let stream = pod_ns(bed, CLIENT)
        .run(move || TcpStream::connect_timeout(&addr, T))
        .expect("netns")
        .expect("allowed connection");
    stream.set_read_timeout(Some(T)).expect("timeout");
    stream
}

#[test]
fn strict_cuts_an_established_connection_that_loses_its_allow() {
    let Some(mut bed) = strict_testbed() else {
        return;
    };
    bed.apply_objects(&with(vec![server_policy(Some(json!([{"port": PORT}])))]))
        .expect("apply");
    let mut stream = open_connection(&bed);
    assert!(echo::round_trip(&mut stream, b"before"));
    bed.apply_objects(&with(vec![server_policy(None)]))
        .expect("apply");
    // The entry is deleted before the status file reports the change; poll anyway, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while echo::round_trip(&mut stream, format!("after {i}").as_bytes()) {
        i += 1;
        assert!(
            Instant::now() < deadline,
            "the established connection still flows after {i} round trips; daemon log:\n{}",
            bed.daemon_log()
        );
    }
    assert!(
        bed.daemon_log()
            .contains("cut 1 connections no longer allowed"),
        "the cut is logged; daemon log:\n{}",
        bed.daemon_log()
    );
}

#[test]
fn strict_keeps_connections_the_change_still_allows() {
    let Some(mut bed) = strict_testbed() else {
        return;
    };
    bed.apply_objects(&with(vec![server_policy(Some(json!([{"port": PORT}])))]))
        .expect("apply");
    let mut stream = open_connection(&bed);
    assert!(echo::round_trip(&mut stream, b"before"));
    // Another port is added: the ruleset changes, this connection stays allowed.
    bed.apply_objects(&with(vec![server_policy(Some(
        json!([{"port": PORT}, {"port": 9000}]),
    ))]))
    .expect("apply");
    for i in 0..20 {
        assert!(
            echo::round_trip(&mut stream, format!("after {i}").as_bytes()),
            "an allowed connection was cut; daemon log:\n{}",
            bed.daemon_log()
        );
    }
    assert!(!bed.daemon_log().contains("connections no longer allowed"));
}

#[test]
fn strict_leaves_connections_the_node_opened_alone() {
    let Some(mut bed) = strict_testbed() else {
        return;
    };
    bed.apply_objects(&with(vec![server_policy(Some(json!([{"port": PORT}])))]))
        .expect("apply");
    let addr = SocketAddr::new(SERVER.2.parse().expect("ip"), PORT);
    let mut stream = bed
        .node()
        .run(move || TcpStream::connect_timeout(&addr, T))
        .expect("netns")
        .expect("node to pod");
    stream.set_read_timeout(Some(T)).expect("timeout");
    assert!(echo::round_trip(&mut stream, b"before"));
    // The server's ingress now denies everyone, the node included; but node-to-pod traffic is
    // not policed without --police-node-traffic, so its connection is not cut either.
    bed.apply_objects(&with(vec![server_policy(None)]))
        .expect("apply");
    for i in 0..5 {
        assert!(
            echo::round_trip(&mut stream, format!("after {i}").as_bytes()),
            "the node's connection was cut; daemon log:\n{}",
            bed.daemon_log()
        );
    }
    assert!(!bed.daemon_log().contains("connections no longer allowed"));
}

/// The sweep's netlink side on a real conntrack table: entries created and deleted many per
/// `sendmsg`, deletes of entries already gone counted as such, nothing else touched.
#[test]
fn conntrack_entries_are_created_and_deleted_in_batches() {
    use nftpol::dataplane::conntrack::{self, Conntrack, Entry, Tuple};
    nftpol_testbed::netns::require(&[]);
    let n = 2 * conntrack::BATCH as u32 + 7;
    let entry = |i: u32, dport: u16| Entry {
        orig: Tuple {
            src: std::net::Ipv4Addr::from(0x0a01_0000 + i).into(),
            dst: "10.0.0.2".parse().expect("ip"),
            proto: 6,
            sport: 40000,
            dport,
        },
        reply: None,
        zone: None,
    };
    let doomed: Vec<Entry> = (0..n).map(|i| entry(i, 81)).collect();
    let kept: Vec<Entry> = (0..5).map(|i| entry(i, 80)).collect();
    let ns = Netns::new().expect("netns");
    let (before, cut, again, after) = ns
        .run(move || {
            let mut ct = Conntrack::open().expect("ctnetlink");
            ct.create_many(&doomed, 60).expect("create");
            ct.create_many(&kept, 60).expect("create");
            let before = ct.dump().expect("dump").len();
            let cut = ct.delete_many(&doomed).expect("delete");
            let again = ct.delete_many(&doomed).expect("delete again");
            let after: Vec<u16> = ct
                .dump()
                .expect("dump")
                .iter()
                .map(|e| e.orig.dport)
                .collect();
            ct.delete_many(&kept).expect("cleanup");
            (before, cut, again, after)
        })
        .expect("in the namespace");
    assert_eq!(before, n as usize + 5);
    assert_eq!(cut, u64::from(n));
    assert_eq!(again, 0, "already gone");
    assert_eq!(after, [80; 5]);
}
