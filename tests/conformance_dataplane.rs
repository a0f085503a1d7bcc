//! The upstream conformance corpus on the real kernel: every case, step and probe matrix of
//! tests/conformance/upstream, enforced by the real `nftpol run` daemon on a testbed node and
//! probed with real new connections (TCP connect, UDP echo, SCTP INIT over raw sockets), once
//! on a bridged (flannel-style) node and once on a routed (Calico-style) node.
//!
//! One testbed per mode serves all 48 cases: between steps the daemon's watched folder is
//! rewritten to the step's cumulative state (Namespaces, Pods with the case's container ports,
//! NetworkPolicies), and the test waits until the daemon reports that folder's fingerprint
//! before probing. Off-diagonal cells must match (upstream ignores self traffic).
//! nftpol's own cases (tests/conformance/nftpol) follow the upstream ones on the same testbeds.
//!
//! A third run gives every pod an IPv6 address too (dual-stack pods on a bridged node, so
//! br_netfilter's ip6tables hook is exercised) and requires every cell to hold over both
//! families. The ipBlock (and ClusterNetworkPolicy networks) cases are left out of it: their
//! CIDRs are IPv4, so over IPv6 the expected answer differs.
//! Needs root and nft; skips otherwise.

mod corpus;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nftpol::policy::model::Protocol;
use nftpol_testbed::{Mode, NODE_NAME, Testbed, daemon, diff_off_diagonal, netns};
use serde_json::{Value, json};

/// The daemon under test: `$NFTPOL_BIN` (e.g. a release build), else this crate's binary.
fn nftpol_bin() -> PathBuf {
    std::env::var_os(daemon::BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nftpol")))
}

fn skip_reason() -> Option<&'static str> {
    if !netns::available() {
        return Some("needs root and iproute2");
    }
    if !Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("needs nft");
    }
    None
}

/// An IPv6 address for a pod's IPv4 one: 10.244.1.10 -> fd00::a:f4:1:a.
fn v6_for(v4: &str) -> String {
    let o: Vec<u8> = v4.split('.').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(o.len(), 4, "{v4} is an IPv4 address");
    format!("fd00::{:x}:{:x}:{:x}:{:x}", o[0], o[1], o[2], o[3])
}

/// Adds an IPv6 address to every pod's `status.podIPs`.
fn make_dual_stack(objects: &mut [Value]) {
    for obj in objects {
        if obj["kind"] != "Pod" {
            continue;
        }
        let v4 = obj["status"]["podIP"].as_str().expect("podIP").to_owned();
        if let Some(ips) = obj["status"]["podIPs"].as_array_mut() {
            ips.push(json!({"ip": v6_for(&v4)}));
        }
    }
}

/// ipBlock (NetworkPolicy) and networks (ClusterNetworkPolicy) peers: IPv4 CIDRs in the
/// corpus.
fn uses_ip_block(case: &corpus::Case) -> bool {
    case.steps.iter().flat_map(|s| &s.apply).any(|item| {
        let text = item.to_string();
        text.contains("ipBlock") || text.contains("\"networks\"")
    })
}

fn run_corpus(mode: Mode, dual_stack: bool) {
    let label = if dual_stack {
        format!("{mode} dual-stack")
    } else {
        mode.to_string()
    };
    if let Some(why) = skip_reason() {
        panic!("{label}: cannot run: {why} (run as root, as hack/test.sh does)");
    }
    let started = Instant::now();
    let model = corpus::load_model();
    let cases = corpus::load_cases();
    assert_eq!(cases.len(), 48, "the corpus has 48 upstream cases");
    let own = corpus::load_own_cases();
    let own_probes: usize = own
        .iter()
        .filter(|c| !(dual_stack && uses_ip_block(c)))
        .flat_map(|c| &c.steps)
        .map(|s| s.probes.len())
        .sum();

    // The topology is the model's 9 pods; ports are added as cases need them.
    let first = corpus::State::new(&model, &cases[0]);
    let mut objects = first.manifests(Some(NODE_NAME));
    if dual_stack {
        make_dual_stack(&mut objects);
    }
    let loaded = nftpol::source::manifest::load_values("model", objects).expect("the model loads");
    let mut bed = Testbed::new(mode, &loaded.state).expect("testbed");
    bed.set_binary(nftpol_bin());
    bed.set_probe_timeout(Duration::from_secs(1));

    let mut probes = 0;
    let mut expected_probes = 0;
    let mut failures = Vec::new();
    for case in cases.iter().chain(&own) {
        if dual_stack && uses_ip_block(case) {
            continue;
        }
        expected_probes += case.steps.iter().map(|s| s.probes.len()).sum::<usize>();
        let mut state = corpus::State::new(&model, case);
        for (si, step) in case.steps.iter().enumerate() {
            state.apply(step);
            let mut objects = state.manifests(Some(NODE_NAME));
            if dual_stack {
                make_dual_stack(&mut objects);
            }
            if let Err(e) = bed.apply_objects(&objects) {
                panic!("{label}: {} step {si}: apply failed: {e:#}", case.id);
            }
            for probe in &step.probes {
                probes += 1;
                let protocol: Protocol = probe.protocol.parse().expect("protocol");
                let m = bed
                    .probe_matrix(probe.port, protocol)
                    .unwrap_or_else(|e| panic!("{label}: {} probe: {e:#}", case.id));
                let bad = diff_off_diagonal(&m, &probe.expect);
                if !bad.is_empty() {
                    failures.push(format!(
                        "{} step {si} ({}) probe {}/{}:\n  {}\n{}",
                        case.id,
                        step.description,
                        probe.port,
                        probe.protocol,
                        bad.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n  "),
                        m.to_table()
                    ));
                }
            }
        }
    }
    eprintln!(
        "{label}: {probes} matrices in {:.1} s, {} differ",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if dual_stack {
        assert!(
            probes - own_probes >= 60,
            "only {probes} matrices without ipBlock"
        );
    } else {
        assert_eq!(probes - own_probes, 65, "the corpus has 65 probe matrices");
    }
    assert_eq!(probes, expected_probes);
    assert!(
        failures.is_empty(),
        "{label}: {} of {probes} matrices differ on the real kernel:\n{}\ndaemon log tail:\n{}",
        failures.len(),
        failures.join("\n"),
        bed.daemon_log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The three runs go in parallel in one test: each spends most of its time waiting out denied
/// probes, so together they take about as long as one (the harness would run only as many
/// tests at once as there are cores).
#[test]
fn upstream_corpus_on_bridged_routed_and_dual_stack_nodes() {
    let runs = [
        (Mode::Bridge, false),
        (Mode::Routed, false),
        (Mode::Bridge, true),
    ];
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(mode, dual)| s.spawn(move || run_corpus(mode, dual)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().err())
            .map(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a run panicked".into())
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn v6_addresses_follow_the_v4_ones() {
    assert_eq!(v6_for("10.244.1.10"), "fd00::a:f4:1:a");
}
