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
