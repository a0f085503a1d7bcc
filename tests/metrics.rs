//! The metrics and health endpoints of the real `nftpol run` on a testbed node, scraped from
//! inside the node namespace: every transaction is observed, the endpoint gauges match the
//! manifests, the drop counters of the per-pod chains grow after a denied connection, and the
//! probes answer. Needs root (network namespaces); every test cleans up (the testbed's drop).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nftpol::policy::model::{ObjectKey, Protocol};
use nftpol_testbed::{Mode, NODE_NAME, Testbed, netns::Netns};
use serde_json::{Value, json};

mod pods;
use pods::{CLIENT, OTHER, SERVER, pod, sample};

/// Not the default port, so that the test proves `--metrics-addr` is honoured.
const PORT: u16 = 19964;
const DEADLINE: Duration = Duration::from_secs(15);

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    })
}

fn cluster() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
        pod(CLIENT, &[80, 81]),
        pod(SERVER, &[80, 81]),
        pod(OTHER, &[80, 81]),
        // A hostNetwork pod: counted as skipped, never enforced.
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "agent", "namespace": "y"},
            "spec": {"nodeName": NODE_NAME, "hostNetwork": true, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "192.168.0.10"}]}
        }),
    ]
}

/// x/server takes port 80 from x/client only; y/other may not send anything.
fn policies() -> Vec<Value> {
    vec![
        policy(
            "x",
            "server-80-from-client",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": 80}]
                }]
            }),
        ),
        policy(
            "y",
            "no-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
    ]
}

fn testbed(mode: Mode) -> Option<Testbed> {
    testbed_with(mode, &[])
}

fn testbed_with(mode: Mode, extra_args: &[&str]) -> Option<Testbed> {
    nftpol_testbed::netns::require(&[]);
    let state = nftpol::source::manifest::load_values("cluster", cluster())
        .expect("cluster loads")
        .state;
    let mut bed = Testbed::new(mode, &state).expect("testbed");
    let mut args = vec!["--metrics-addr".to_string(), format!("127.0.0.1:{PORT}")];
    args.extend(extra_args.iter().map(ToString::to_string));
    bed.set_daemon_args(args);
    for p in [CLIENT, SERVER, OTHER] {
        let key = ObjectKey::new(p.0, p.1);
        for port in [80, 81] {
            bed.listen(&key, port, Protocol::Tcp).expect("listen");
        }
    }
    Some(bed)
}

fn pod_ns<'a>(bed: &'a Testbed, p: (&str, &str, &str)) -> &'a Netns {
    bed.pod_netns(&ObjectKey::new(p.0, p.1))
        .expect("pod on the testbed")
}

fn connects(ns: &Netns, to: &str, port: u16) -> bool {
    let addr = SocketAddr::new(to.parse().expect("address"), port);
    ns.tcp_connects(addr, Duration::from_millis(700))
}

fn scrape(bed: &Testbed) -> String {
    let (code, body) = bed.http_get(PORT, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

/// Scrapes until `check` holds on `name`, or fails with the last value after [`DEADLINE`].
fn wait_for(bed: &Testbed, name: &str, check: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(bed);
        let v = sample(&text, name).unwrap_or(0.0);
        if check(v) {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {v}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The apply-time histogram has one sample per committed transaction.
fn assert_every_commit_observed(text: &str) {
    assert_eq!(
        value(text, "nftpol_int_dataplane_apply_time_seconds_count"),
        value(text, "nftpol_nft_transactions") - value(text, "nftpol_nft_errors"),
        "every committed transaction is observed:\n{text}"
    );
}

fn probe_status(bed: &Testbed, path: &str) -> (u16, String) {
    bed.http_get(PORT, path)
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

fn metrics_follow_the_node(mode: Mode) {
    let Some(mut bed) = testbed(mode) else { return };
    let mut objects = cluster();
    objects.extend(policies());
    bed.apply_objects(&objects).expect("first apply");

    // The status file is written after the commit, so the first sync is done; poll anyway
    // (readiness has no reason to lag, but the test must not depend on that ordering).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, body) = probe_status(&bed, "/readyz");
        if code == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probe_status(&bed, "/livez"), (200, "ok\n".to_string()));
    assert_eq!(probe_status(&bed, "/nothing-here").0, 404);

    let text = scrape(&bed);
    assert_eq!(value(&text, "nftpol_active_local_endpoints"), 3.0);
    assert_eq!(value(&text, "nftpol_active_local_policies"), 2.0);
    assert_eq!(
        value(
            &text,
            "nftpol_isolated_local_endpoints{direction=\"ingress\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "nftpol_isolated_local_endpoints{direction=\"egress\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "nftpol_skipped_pods{reason=\"hostNetwork\"}"),
        1.0
    );
    assert_eq!(value(&text, "nftpol_br_netfilter_enabled"), 1.0);
    // Two per-pod chains, forward and input.
    assert_eq!(value(&text, "nftpol_nft_chains"), 4.0);
    assert!(value(&text, "nftpol_nft_rules") > 4.0);
    assert!(value(&text, "nftpol_nft_set_elements") >= 2.0);
    assert!(value(&text, "nftpol_int_dataplane_initial_resync_time_seconds") > 0.0);
    assert_eq!(value(&text, "nftpol_int_dataplane_failures"), 0.0);
    assert_eq!(value(&text, "nftpol_nft_errors"), 0.0);
    let transactions = value(&text, "nftpol_nft_transactions");
    assert!(transactions >= 1.0);
    assert_every_commit_observed(&text);
    let delays = value(&text, "nftpol_policy_implementation_delay_seconds_count");
    assert!(delays >= 1.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(value(&text, "process_open_fds") > 0.0);

    // Denied: x/client to x/server on 81 (ingress of x), y/other to anything (egress of y).
    let ingress_x = "nftpol_dropped_packets{direction=\"ingress\",namespace=\"x\"}";
    let egress_y = "nftpol_dropped_packets{direction=\"egress\",namespace=\"y\"}";
    let before_in = sample(&text, ingress_x).unwrap_or(0.0);
    let before_eg = sample(&text, egress_y).unwrap_or(0.0);
    assert!(connects(pod_ns(&bed, CLIENT), SERVER.2, 80), "allowed");
    assert!(!connects(pod_ns(&bed, CLIENT), SERVER.2, 81), "denied");
    assert!(!connects(pod_ns(&bed, OTHER), CLIENT.2, 80), "denied");
    wait_for(&bed, ingress_x, |v| v > before_in);
    let text = wait_for(&bed, egress_y, |v| v > before_eg);
    assert_eq!(
        sample(
            &text,
            "nftpol_dropped_packets{direction=\"egress\",namespace=\"x\"}"
        ),
        None,
        "nothing isolates egress in x"
    );

    // A change: y/other may now reach x/server on 80; one more transaction, observed.
    let mut objects = cluster();
    objects.extend(policies());
    objects.push(policy(
        "y",
        "other-to-server",
        json!({
            "podSelector": {"matchLabels": {"app": "other"}},
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]
        }),
    ));
    bed.apply_objects(&objects).expect("second apply");
    let text = wait_for(&bed, "nftpol_nft_transactions", |v| v > transactions);
    assert_every_commit_observed(&text);
    assert!(value(&text, "nftpol_policy_implementation_delay_seconds_count") > delays);
    assert_eq!(value(&text, "nftpol_active_local_policies"), 3.0);
    assert_eq!(probe_status(&bed, "/readyz").0, 200);
}

#[test]
fn bridged_node_metrics_follow_enforcement() {
    metrics_follow_the_node(Mode::Bridge);
}

#[test]
fn routed_node_metrics_follow_enforcement() {
    metrics_follow_the_node(Mode::Routed);
}

/// Someone empties a per-pod set behind nftpol's back; the next diff deletes an element that is
/// gone, the kernel rejects it, and the full replace that follows commits: one transaction
/// error, no dataplane failure (the update went through), the node stays ready.
#[test]
fn rejected_transaction_is_counted() {
    nftpol_testbed::netns::require(&["nft"]);
    let Some(mut bed) = testbed(Mode::Routed) else {
        return;
    };
    let mut objects = cluster();
    objects.extend(policies());
    bed.apply_objects(&objects).expect("first apply");
    let text = scrape(&bed);
    let transactions = value(&text, "nftpol_nft_transactions");
    assert_eq!(value(&text, "nftpol_nft_errors"), 0.0);

    // The server's tuple set, shared by the pods its policies isolate: named after them.
    let chain = bed
        .node()
        .exec(
            "nft",
            &["list", "chain", "inet", "nftpol", "ing/x/server"],
            None,
        )
        .expect("nft list chain");
    let set = chain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("@ing4/"))
        .map(|rest| format!("ing4/{rest}"))
        .unwrap_or_else(|| panic!("no tuple set in {chain}"));
    bed.node()
        .exec("nft", &["flush", "set", "inet", "nftpol", &set], None)
        .expect("nft flush set");
    let mut objects = cluster();
    let mut changed = policies();
    changed[0]["spec"]["ingress"][0]["ports"][0]["port"] = json!(8080);
    objects.extend(changed);
    bed.apply_objects(&objects).expect("second apply");

    let text = scrape(&bed);
    assert_eq!(value(&text, "nftpol_nft_errors"), 1.0, "{text}");
    assert_eq!(value(&text, "nftpol_nft_transactions"), transactions + 2.0);
    assert_eq!(value(&text, "nftpol_int_dataplane_failures"), 0.0);
    assert_every_commit_observed(&text);
    assert_eq!(probe_status(&bed, "/readyz").0, 200);
}

/// The table is deleted behind nftpol's back; the resync repairs it with one more committed
/// transaction, which the apply-time histogram observes too.
#[test]
fn drift_repair_is_a_counted_transaction() {
    nftpol_testbed::netns::require(&["nft"]);
    let Some(mut bed) = testbed_with(Mode::Routed, &["--resync-interval", "1"]) else {
        return;
    };
    let mut objects = cluster();
    objects.extend(policies());
    bed.apply_objects(&objects).expect("first apply");
    let text = scrape(&bed);
    let transactions = value(&text, "nftpol_nft_transactions");
    assert_eq!(value(&text, "nftpol_drift_repairs"), 0.0);

    bed.node()
        .exec("nft", &["delete", "table", "inet", "nftpol"], None)
        .expect("nft delete table");
    let text = wait_for(&bed, "nftpol_drift_repairs", |v| v > 0.0);
    assert_eq!(value(&text, "nftpol_drift_repairs"), 1.0);
    assert!(value(&text, "nftpol_nft_transactions") > transactions);
    assert_every_commit_observed(&text);
    assert_eq!(value(&text, "nftpol_nft_errors"), 0.0);
    assert_eq!(value(&text, "nftpol_nft_chains"), 4.0);
    assert!(
        bed.node()
            .exec("nft", &["list", "table", "inet", "nftpol"], None)
            .is_ok(),
        "the table is back"
    );
}
