//! Enforcement with real packets on a testbed node running the real `nftpol run` daemon:
//! both sides of a connection are checked, established connections survive losing their allow,
//! no denied connection slips through (and no allowed one fails) while 200 policy updates are
//! applied, both address families of dual-stack pods are enforced, and the node keeps reaching
//! its pods under default deny. Needs root (network namespaces); every test cleans up.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nftpol::policy::model::{ClusterState, ObjectKey};
use nftpol_testbed::{Mode, NODE_NAME, Testbed, echo, netns::Netns};
use serde_json::{Value, json};

const CLIENT: (&str, &str, &str, &str) = ("x", "client", "10.244.1.2", "fd00:1::2");
const SERVER: (&str, &str, &str, &str) = ("x", "server", "10.244.1.3", "fd00:1::3");
const OTHER: (&str, &str, &str, &str) = ("y", "other", "10.244.2.4", "fd00:2::4");

fn pod((ns, name, v4, v6): (&str, &str, &str, &str)) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 80}, {"containerPort": 81}]}]},
        "status": {"phase": "Running", "podIPs": [{"ip": v4}, {"ip": v6}]}
    })
}

fn cluster() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
        pod(CLIENT),
        pod(SERVER),
        pod(OTHER),
    ]
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    })
}

fn with(policies: Vec<Value>) -> Vec<Value> {
    let mut objects = cluster();
    objects.extend(policies);
    objects
}

fn testbed(mode: Mode) -> Option<Testbed> {
    nftpol_testbed::netns::require(&[]);
    let loaded =
        nftpol::source::manifest::load_values("cluster", cluster()).expect("cluster loads");
    let state: ClusterState = loaded.state;
    let mut bed = Testbed::new(mode, &state).expect("testbed");
    bed.set_probe_timeout(Duration::from_millis(700));
    for p in [CLIENT, SERVER, OTHER] {
        let key = ObjectKey::new(p.0, p.1);
        bed.listen(&key, 80, nftpol::policy::model::Protocol::Tcp)
            .expect("listen 80");
        bed.listen(&key, 81, nftpol::policy::model::Protocol::Tcp)
            .expect("listen 81");
    }
    Some(bed)
}

fn pod_ns<'a>(bed: &'a Testbed, p: (&str, &str, &str, &str)) -> &'a Netns {
    bed.pod_netns(&ObjectKey::new(p.0, p.1))
        .expect("pod on the testbed")
}

/// A new TCP connection from `from`'s namespace to `to:port`.
fn connects(ns: &Netns, to: &str, port: u16, timeout: Duration) -> bool {
    ns.tcp_connects(
        SocketAddr::new(to.parse::<IpAddr>().expect("ip"), port),
        timeout,
    )
}

const T: Duration = Duration::from_millis(700);

#[test]
fn both_sides_of_a_connection_are_checked() {
    for mode in [Mode::Bridge, Mode::Routed] {
        let Some(mut bed) = testbed(mode) else { return };
        let client_egress = policy(
            "x",
            "client-egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                               "ports": [{"port": 80}]}]}),
        );
        let server_from_other = policy(
            "x",
            "server-ingress",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "other"}}}]}]}),
        );
        let server_from_client = policy(
            "x",
            "server-ingress",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        );
        // The client's egress allows, the server's ingress does not: denied.
        bed.apply_objects(&with(vec![client_egress.clone(), server_from_other]))
            .expect("apply");
        assert!(
            !connects(pod_ns(&bed, CLIENT), SERVER.2, 80, T),
            "{mode}: ingress not checked"
        );
        // Both allow: allowed (the egress chain returned instead of accepting).
        bed.apply_objects(&with(vec![client_egress, server_from_client.clone()]))
            .expect("apply");
        assert!(
            connects(pod_ns(&bed, CLIENT), SERVER.2, 80, T),
            "{mode}: both allow"
        );
        assert!(
            !connects(pod_ns(&bed, CLIENT), SERVER.2, 81, T),
            "{mode}: egress port"
        );
        // The server allows, the client's egress isolates with nothing allowed: denied.
        let client_deny = policy(
            "x",
            "client-egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}),
        );
        bed.apply_objects(&with(vec![client_deny, server_from_client]))
            .expect("apply");
        assert!(
            !connects(pod_ns(&bed, CLIENT), SERVER.2, 80, T),
            "{mode}: egress not checked"
        );
        assert!(
            connects(pod_ns(&bed, OTHER), CLIENT.2, 80, T),
            "{mode}: client ingress open"
        );
    }
}

#[test]
fn established_connection_survives_losing_its_allow() {
    let Some(mut bed) = testbed(Mode::Bridge) else {
        return;
    };
    let allow = policy(
        "x",
        "server",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 7000}]}]}),
    );
    let deny = policy(
        "x",
        "server",
        json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}),
    );
    let addr = SocketAddr::new(SERVER.2.parse().expect("ip"), 7000);
    echo::serve(pod_ns(&bed, SERVER), addr).expect("echo server");
    bed.apply_objects(&with(vec![allow])).expect("apply");
    let mut stream = pod_ns(&bed, CLIENT)
        .run(move || TcpStream::connect_timeout(&addr, T))
        .expect("netns")
        .expect("allowed connection");
    stream.set_read_timeout(Some(T)).expect("timeout");
    assert!(echo::round_trip(&mut stream, b"before"));
    bed.apply_objects(&with(vec![deny])).expect("apply");
    assert!(
        !connects(pod_ns(&bed, CLIENT), SERVER.2, 7000, T),
        "new connections are denied after the change"
    );
    for i in 0..20 {
        assert!(
            echo::round_trip(&mut stream, format!("after {i}").as_bytes()),
            "established connection cut"
        );
    }
}

#[test]
fn no_denied_connection_passes_and_no_allowed_one_fails_during_200_updates() {
    let Some(mut bed) = testbed(Mode::Bridge) else {
        return;
    };
    // Every generation allows client -> server:80 and denies client -> server:81; what changes
    // is an unrelated allow (other -> server on a port that moves), so that each update
    // rewrites the server's sets while the stream of connections runs.
    let generation = |n: u16| {
        with(vec![policy(
            "x",
            "server",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "other"}}}],
                 "ports": [{"port": 1000 + n}]},
                {"from": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", n % 200 + 20)}}]}
            ]}),
        )])
    };
    bed.apply_objects(&generation(0)).expect("apply");
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let (denied_tries, denied_passed, allowed_tries, allowed_failed) = (0, 1, 2, 3);
    let worker = {
        let (stop, counts) = (stop.clone(), counts.clone());
        let denied = SocketAddr::new(SERVER.2.parse().expect("ip"), 81);
        let allowed = SocketAddr::new(SERVER.2.parse().expect("ip"), 80);
        pod_ns(&bed, CLIENT)
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    counts[denied_tries].fetch_add(1, Ordering::Relaxed);
                    if TcpStream::connect_timeout(&denied, Duration::from_millis(30)).is_ok() {
                        counts[denied_passed].fetch_add(1, Ordering::Relaxed);
                    }
                    counts[allowed_tries].fetch_add(1, Ordering::Relaxed);
                    if TcpStream::connect_timeout(&allowed, Duration::from_secs(2)).is_err() {
                        counts[allowed_failed].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("spawn in netns")
    };
    for n in 1..=200 {
        bed.apply_objects(&generation(n)).expect("apply");
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker").expect("netns");
    let c = |i: usize| counts[i].load(Ordering::Relaxed);
    eprintln!(
        "during 200 updates: {} denied attempts ({} passed), {} allowed attempts ({} failed)",
        c(denied_tries),
        c(denied_passed),
        c(allowed_tries),
        c(allowed_failed)
    );
    assert!(c(denied_tries) > 50, "the stream ran");
    assert_eq!(c(denied_passed), 0, "a denied connection got through");
    assert_eq!(c(allowed_failed), 0, "an allowed connection failed");
    let log = bed.daemon_log();
    assert!(!log.contains("rejected"), "{log}");
}

#[test]
fn dual_stack_pods_are_enforced_in_both_families() {
    for mode in [Mode::Bridge, Mode::Routed] {
        let Some(mut bed) = testbed(mode) else { return };
        bed.apply_objects(&with(vec![policy(
            "x",
            "server",
            json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.244.1.0/24"}},
                {"ipBlock": {"cidr": "fd00:2::/64"}}]}]}),
        )]))
        .expect("apply");
        let (client, other) = (pod_ns(&bed, CLIENT), pod_ns(&bed, OTHER));
        assert!(
            connects(client, SERVER.2, 80, T),
            "{mode}: client over IPv4"
        );
        assert!(
            !connects(client, SERVER.3, 80, T),
            "{mode}: client over IPv6"
        );
        assert!(!connects(other, SERVER.2, 80, T), "{mode}: other over IPv4");
        assert!(connects(other, SERVER.3, 80, T), "{mode}: other over IPv6");
        // Egress too: the client may only reach IPv6 addresses.
        bed.apply_objects(&with(vec![policy(
            "x",
            "client",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "::/0"}}]}]}),
        )]))
        .expect("apply");
        let client = pod_ns(&bed, CLIENT);
        assert!(
            !connects(client, OTHER.2, 80, T),
            "{mode}: egress over IPv4"
        );
        assert!(connects(client, OTHER.3, 80, T), "{mode}: egress over IPv6");
    }
}

#[test]
fn the_node_reaches_its_pods_under_default_deny() {
    for mode in [Mode::Bridge, Mode::Routed] {
        let Some(mut bed) = testbed(mode) else { return };
        bed.apply_objects(&with(vec![policy(
            "x",
            "default-deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )]))
        .expect("apply");
        assert!(
            !connects(pod_ns(&bed, OTHER), SERVER.2, 80, T),
            "{mode}: default deny works"
        );
        assert!(
            connects(bed.node(), SERVER.2, 80, T),
            "{mode}: node -> pod (IPv4)"
        );
        assert!(
            connects(bed.node(), SERVER.3, 80, T),
            "{mode}: node -> pod (IPv6)"
        );
    }
}
