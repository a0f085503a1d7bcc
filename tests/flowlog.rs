//! Flow logs and audit mode of the real `nftpol run` on a testbed node, with real packets: a
//! denied connection gives exactly one log line naming both pods and the isolating policy; a
//! policy annotated `nftpol.io/log` logs the connections it allows; `--mode audit` and the
//! namespace annotation `nftpol.io/enforcement: audit` let denied connections through, log
//! them and count them in `nftpol_audit_would_drop_packets`; and `/readyz` stays false until
//! the first sync. Needs root (network namespaces); every test cleans up (the testbed's drop).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nftpol::policy::model::{ObjectKey, Protocol};
use nftpol_testbed::{Mode, NODE_NAME, Testbed, netns::Netns};
use serde_json::{Value, json};

mod pods;
use pods::{CLIENT, OTHER, SERVER, pod, sample};

const PORT: u16 = 19965;
const DEADLINE: Duration = Duration::from_secs(15);

/// Namespace `x` (in audit mode when `x_audit`), namespace `y`, three pods; x/server takes
/// port 80 from x/client only (the policy logs what it allows when `log_allowed`), and y
/// may send nothing.
fn objects(x_audit: bool, log_allowed: bool) -> Vec<Value> {
    let mut x = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    if x_audit {
        x["metadata"]["annotations"] = json!({"nftpol.io/enforcement": "audit"});
    }
    let mut server_policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "server-80-from-client", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"port": 80}]
            }]
        }
    });
    if log_allowed {
        server_policy["metadata"]["annotations"] = json!({"nftpol.io/log": "true"});
    }
    vec![
        x,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
        pod(CLIENT, &[80, 81]),
        pod(SERVER, &[80, 81]),
        pod(OTHER, &[80, 81]),
        server_policy,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "no-egress", "namespace": "y"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
        }),
    ]
}

/// A testbed whose daemon writes JSON logs and serves metrics on [`PORT`], with every pod
/// listening on TCP 80 and 81, enforcing `objects`.
fn testbed(mode: Mode, extra_args: &[&str], objects: &[Value]) -> Option<Testbed> {
    let mut bed = unstarted(mode, extra_args, objects)?;
    bed.apply_objects(objects).expect("apply");
    Some(bed)
}

/// The same testbed before its daemon starts (at the first apply).
fn unstarted(mode: Mode, extra_args: &[&str], objects: &[Value]) -> Option<Testbed> {
    nftpol_testbed::netns::require(&[]);
    let state = nftpol::source::manifest::load_values("cluster", objects.to_vec())
        .expect("cluster loads")
        .state;
    let mut bed = Testbed::new(mode, &state).expect("testbed");
    let mut args = vec![
        "--log-format".to_string(),
        "json".to_string(),
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{PORT}"),
    ];
    args.extend(extra_args.iter().map(ToString::to_string));
    bed.set_daemon_args(args);
    for p in [CLIENT, SERVER, OTHER] {
        for port in [80, 81] {
            bed.listen(&ObjectKey::new(p.0, p.1), port, Protocol::Tcp)
                .expect("listen");
        }
    }
    Some(bed)
}

fn pod_ns<'a>(bed: &'a Testbed, p: (&str, &str, &str)) -> &'a Netns {
    bed.pod_netns(&ObjectKey::new(p.0, p.1))
        .expect("pod on the testbed")
}

/// A TCP connection attempt; short enough that no SYN is retransmitted (the first retry
/// leaves after 1 s), so one attempt is one logged packet.
fn connects(bed: &Testbed, from: (&str, &str, &str), to: (&str, &str, &str), port: u16) -> bool {
    let addr = SocketAddr::new(to.2.parse().expect("address"), port);
    pod_ns(bed, from).tcp_connects(addr, Duration::from_millis(700))
}

/// The flow log lines the daemon wrote so far.
fn flow_lines(bed: &Testbed) -> Vec<Value> {
    bed.daemon_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "nftpol::flow")
        .collect()
}

fn is_line(
    v: &Value,
    action: &str,
    from: (&str, &str, &str),
    to: (&str, &str, &str),
    port: u16,
) -> bool {
    v["action"] == action && v["src"] == from.2 && v["dst"] == to.2 && v["port"] == port
}

/// Waits for a line of `action` from `from` to `to` on `port`; returns every line then.
fn wait_for_line(
    bed: &Testbed,
    action: &str,
    from: (&str, &str, &str),
    to: (&str, &str, &str),
    port: u16,
) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lines = flow_lines(bed);
        if lines.iter().any(|v| is_line(v, action, from, to, port)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no {action} line for {}:{port} -> {}; daemon log:\n{}",
            from.2,
            to.2,
            bed.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(bed: &Testbed) -> String {
    let (code, body) = bed.http_get(PORT, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// Scrapes until `name` is above zero, or fails after [`DEADLINE`].
fn wait_for_positive(bed: &Testbed, name: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(bed);
        if sample(&text, name).is_some_and(|v| v > 0.0) {
            return text;
        }
        assert!(Instant::now() < deadline, "{name} never counted:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn denied_connection_is_logged_once(mode: Mode) {
    let Some(bed) = testbed(mode, &[], &objects(false, false)) else {
        return;
    };
    assert!(connects(&bed, CLIENT, SERVER, 80), "allowed");
    assert!(!connects(&bed, CLIENT, SERVER, 81), "denied by x's ingress");
    // A second denied connection, logged after the first: once its line is there, every
    // line the first could cause is there too (one socket, read in order).
    assert!(!connects(&bed, OTHER, CLIENT, 80), "denied by y's egress");
    let lines = wait_for_line(&bed, "drop", OTHER, CLIENT, 80);

    let first: Vec<&Value> = lines
        .iter()
        .filter(|v| is_line(v, "drop", CLIENT, SERVER, 81))
        .collect();
    assert_eq!(
        first.len(),
        1,
        "exactly one line per connection: {lines:#?}"
    );
    let line = first[0];
    assert_eq!(line["direction"], "ingress");
    assert_eq!(line["src_pod"], "x/client");
    assert_eq!(line["dst_pod"], "x/server");
    assert_eq!(line["pod"], "x/server");
    assert_eq!(line["protocol"], "TCP");
    assert_eq!(line["policies"], "x/server-80-from-client");
    let message = line["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no ingress rule of it allows it"),
        "{message}"
    );
    let egress = lines
        .iter()
        .find(|v| is_line(v, "drop", OTHER, CLIENT, 80))
        .expect("the second line");
    assert_eq!(egress["direction"], "egress");
    assert_eq!(egress["pod"], "y/other");
    assert_eq!(egress["policies"], "y/no-egress");
    // The allowed connection is not logged: no policy asked for it.
    assert!(!lines.iter().any(|v| v["action"] == "allow"), "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");

    let text = scrape(&bed);
    assert_eq!(
        sample(&text, "nftpol_flow_logs{action=\"drop\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "nftpol_flow_log_active"), Some(1.0));
    assert_eq!(sample(&text, "nftpol_flow_logs_lost"), Some(0.0));
}

#[test]
fn bridged_denied_connection_is_logged_once() {
    denied_connection_is_logged_once(Mode::Bridge);
}

#[test]
fn routed_denied_connection_is_logged_once() {
    denied_connection_is_logged_once(Mode::Routed);
}

/// UDP and SCTP drops name their protocol: the probes of every pair on port 81, where x/server
/// takes nothing (its policy allows TCP 80 only).
#[test]
fn udp_and_sctp_drops_are_logged_with_their_protocol() {
    let Some(mut bed) = testbed(Mode::Routed, &[], &objects(false, false)) else {
        return;
    };
    for protocol in [Protocol::Udp, Protocol::Sctp] {
        let matrix = bed.probe_matrix(81, protocol).expect("probe");
        let cell = nftpol_testbed::probe::cell(&matrix, "x/client", "x/server");
        assert_eq!(
            cell,
            Some(false),
            "{protocol:?} client -> server:81 is denied"
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let lines = flow_lines(&bed);
            if let Some(line) = lines.iter().find(|v| {
                is_line(v, "drop", CLIENT, SERVER, 81) && v["protocol"] == protocol.as_str()
            }) {
                assert_eq!(line["policies"], "x/server-80-from-client");
                assert_eq!(line["direction"], "ingress");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no {protocol:?} drop line: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn logging_policy_logs_the_connections_it_allows() {
    let Some(bed) = testbed(Mode::Bridge, &[], &objects(false, true)) else {
        return;
    };
    assert!(connects(&bed, CLIENT, SERVER, 80), "allowed");
    let lines = wait_for_line(&bed, "allow", CLIENT, SERVER, 80);
    let line = lines
        .iter()
        .find(|v| is_line(v, "allow", CLIENT, SERVER, 80))
        .expect("allow line");
    assert_eq!(line["direction"], "ingress");
    assert_eq!(line["policies"], "x/server-80-from-client#0");
    assert_eq!(line["src_pod"], "x/client");
}

#[test]
fn audit_mode_lets_denied_connections_through_and_logs_them() {
    let Some(bed) = testbed(Mode::Bridge, &["--mode", "audit"], &objects(false, false)) else {
        return;
    };
    assert!(
        connects(&bed, CLIENT, SERVER, 81),
        "audit mode drops nothing"
    );
    assert!(
        connects(&bed, OTHER, CLIENT, 80),
        "audit mode drops nothing"
    );
    let lines = wait_for_line(&bed, "audit", CLIENT, SERVER, 81);
    let line = lines
        .iter()
        .find(|v| is_line(v, "audit", CLIENT, SERVER, 81))
        .expect("audit line");
    assert_eq!(line["policies"], "x/server-80-from-client");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("): would be dropped (audit mode")),
        "{line}"
    );
    wait_for_line(&bed, "audit", OTHER, CLIENT, 80);
    let text = wait_for_positive(
        &bed,
        "nftpol_audit_would_drop_packets{direction=\"ingress\",namespace=\"x\"}",
    );
    assert!(
        sample(
            &text,
            "nftpol_audit_would_drop_packets{direction=\"egress\",namespace=\"y\"}"
        )
        .is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(
        !text.contains("nftpol_dropped_packets{"),
        "nothing dropped:\n{text}"
    );
}

#[test]
fn namespace_in_audit_mode_lets_through_only_its_own_denials() {
    let Some(mut bed) = testbed(Mode::Routed, &[], &objects(true, false)) else {
        return;
    };
    assert!(connects(&bed, CLIENT, SERVER, 81), "x is in audit mode");
    assert!(!connects(&bed, OTHER, CLIENT, 80), "y is enforced");
    wait_for_line(&bed, "audit", CLIENT, SERVER, 81);
    wait_for_line(&bed, "drop", OTHER, CLIENT, 80);

    // Out of audit mode: the same connection is dropped now.
    bed.apply_objects(&objects(false, false))
        .expect("enforce x");
    assert!(!connects(&bed, CLIENT, SERVER, 81), "x is enforced again");
    wait_for_line(&bed, "drop", CLIENT, SERVER, 81);
}

/// Another socket holds the NFLOG group when the daemon starts: it enforces anyway, says that
/// flow logs are off, and starts them once the group is free.
#[test]
fn flow_logs_start_once_the_group_is_free() {
    let objects = objects(false, false);
    let Some(mut bed) = unstarted(Mode::Routed, &[], &objects) else {
        return;
    };
    let held = bed
        .node()
        .run(|| nftpol::observe::nflog::NflogSocket::bind(100))
        .expect("in the node namespace")
        .expect("binding group 100 first");
    bed.apply_objects(&objects).expect("apply");
    assert!(!connects(&bed, CLIENT, SERVER, 81), "enforced without logs");
    assert_eq!(sample(&scrape(&bed), "nftpol_flow_log_active"), Some(0.0));
    assert!(
        bed.daemon_log()
            .contains("flow logs are off until NFLOG group 100 can be bound"),
        "{}",
        bed.daemon_log()
    );
    drop(held);
    wait_for_positive(&bed, "nftpol_flow_log_active");
    assert!(!connects(&bed, CLIENT, SERVER, 81));
    wait_for_line(&bed, "drop", CLIENT, SERVER, 81);
}

/// `/readyz` answers 503 until the first ruleset is committed: here the folder first holds a
/// manifest that does not load, so nothing is programmed until it is fixed.
#[test]
fn readiness_waits_for_the_first_sync() {
    nftpol_testbed::netns::require(&[]);
    let ns = Netns::with_tag("ready").expect("namespace");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let work = tempdir();
    let manifests = work.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests folder");
    std::fs::write(manifests.join("broken.yaml"), "kind: [unclosed").expect("write");
    let bin = nftpol_testbed::daemon::find_binary().expect("nftpol binary");
    let mut daemon = nftpol_testbed::daemon::Daemon::start(
        &ns,
        &bin,
        &manifests,
        NODE_NAME,
        &work.join("status.json"),
        &work.join("daemon.log"),
        &["--metrics-addr".into(), format!("127.0.0.1:{PORT}")],
    )
    .expect("daemon");
    let get = |path: &str| nftpol_testbed::daemon::http_get(&ns, PORT, path);
    let deadline = Instant::now() + DEADLINE;
    let (code, body) = loop {
        match get("/readyz") {
            Ok(answer) => break answer,
            Err(e) => assert!(Instant::now() < deadline, "never served: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("first full sync"), "{body}");
    assert_eq!(get("/livez").expect("livez").0, 200);

    std::fs::remove_file(manifests.join("broken.yaml")).expect("remove");
    let objects = objects(false, false);
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect();
    std::fs::write(manifests.join("cluster.yaml"), yaml.join("\n---\n")).expect("write");
    let fingerprint = nftpol::source::manifest::fingerprint(std::slice::from_ref(&manifests))
        .expect("fingerprint");
    daemon
        .wait_for_fingerprint(&fingerprint, DEADLINE)
        .expect("enforced");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, body) = get("/readyz").expect("readyz");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&work);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nftpol-ready-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
