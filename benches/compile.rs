//! Compiler benchmark (`cargo bench --bench compile`): a 10,000-pod, 500-namespace,
//! 2,000-policy cluster, compiled for one node with 100 local pods; then the incremental cost of
//! one pod label change and of one policy change, the peak memory of the whole state, and what
//! resolving one flow log line (a logged packet to pods and policies) costs on that state.
//! It prints figures and ratios against the targets; it asserts no times.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nftpol::dataplane::ruleset::LogAction;
use nftpol::observe::flowlog::{Flow, describe};
use nftpol::observe::nflog::PacketInfo;
use nftpol::policy::compile::{Compiler, Scope};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::model::{Direction, ObjectKey, PortMatch};

use common::{NAMESPACES, cluster};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rss_start = peak_rss_kib();
    let state = cluster();
    let t = Instant::now();
    let mut index = ClusterIndex::from_state(&state);
    let index_time = t.elapsed();
    drop(state);

    let scope = Scope::Node("node-7".into());
    let mut full = Vec::new();
    let mut compiler = Compiler::new(scope.clone());
    for _ in 0..7 {
        let t = Instant::now();
        compiler.full(&index);
        full.push(t.elapsed());
    }
    let stats = compiler.plan().stats();
    let elements: usize = compiler
        .plan()
        .endpoints
        .values()
        .flat_map(|e| [&e.ingress, &e.egress])
        .flatten()
        .map(|i| i.allowed.any_port.len() + i.allowed.port_elements())
        .sum();

    // One pod label change: a remote pod flips its app label (peer sets that select it change).
    let mut label_changes = Vec::new();
    for n in 0..200 {
        let ns = (n * 37) % NAMESPACES;
        let key = ObjectKey::new(format!("ns-{ns}"), "pod-3");
        let Some(old) = index.pod(&key).cloned() else {
            continue;
        };
        let mut new = old.clone();
        let app = if n % 2 == 0 { "app-0" } else { "app-3" };
        std::sync::Arc::make_mut(&mut new.labels).insert("app".into(), app.into());
        let t = Instant::now();
        index.upsert_pod(new.clone());
        compiler.pod_changed(&index, Some(&old), Some(&new));
        label_changes.push(t.elapsed());
    }

    // One policy change: a policy of a namespace with local pods changes its port range.
    let mut policy_changes = Vec::new();
    let local_ns: Vec<String> = compiler
        .plan()
        .endpoints
        .keys()
        .map(|k| k.namespace.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for n in 0..200 {
        let ns = &local_ns[n % local_ns.len()];
        let key = ObjectKey::new(ns.clone(), "allow-team");
        let Some(mut policy) = index.policy(&key).cloned() else {
            continue;
        };
        if let Some(ports) = policy.ingress[0].ports.as_mut() {
            ports[0].port = PortMatch::Range(8080, 8090 + (n % 7) as u16);
        }
        let t = Instant::now();
        index.upsert_policy(policy);
        compiler.policy_changed(&index, &key);
        policy_changes.push(t.elapsed());
    }

    // Flow log lines: a packet from a remote pod dropped at the ingress of each local endpoint,
    // resolved against the index and the plan as the daemon does for every logged packet.
    let remote: Vec<std::net::IpAddr> = index
        .pods()
        .filter_map(|p| p.ips.first().copied())
        .take(1000)
        .collect();
    let local: Vec<std::net::IpAddr> = compiler
        .plan()
        .isolated()
        .filter_map(|e| e.ips.first().copied())
        .collect();
    let mut flow_lines = Vec::new();
    for (n, src) in remote.iter().enumerate() {
        let flow = Flow {
            action: LogAction::Drop,
            direction: Direction::Ingress,
            packet: PacketInfo {
                src: *src,
                dst: local[n % local.len()],
                protocol: 6,
                src_port: Some(40000),
                dst_port: Some(9999),
            },
            domain_rule: false,
        };
        let t = Instant::now();
        let line = describe(&flow, compiler.plan(), &index, &|_| Vec::new());
        flow_lines.push(t.elapsed());
        std::hint::black_box(line);
    }

    // The incremental result must equal a full compile of the final state.
    let mut check = Compiler::new(scope);
    check.full(&index);
    let consistent = check.plan() == compiler.plan();

    let peak_mib = (peak_rss_kib().saturating_sub(rss_start)) as f64 / 1024.0;
    let total_peak_mib = peak_rss_kib() as f64 / 1024.0;
    let full_ms = ms(median(full));
    let label_ms = ms(median(label_changes.clone()));
    let policy_ms = ms(median(policy_changes.clone()));
    let mut by_target = BTreeMap::new();
    by_target.insert("full compile (target 200 ms)", (full_ms, 200.0));
    by_target.insert("pod label change (target 5 ms)", (label_ms, 5.0));
    by_target.insert("policy change (target 5 ms)", (policy_ms, 5.0));
    by_target.insert("peak memory MiB (target 100)", (total_peak_mib, 100.0));

    println!(
        "cluster: {} pods, {} namespaces, {} policies; node-7: {} endpoints ({} ingress-isolated, {} egress-isolated), {} policies, {} set elements",
        index.pod_count(),
        NAMESPACES,
        index.policy_count(),
        stats.endpoints,
        stats.isolated_ingress,
        stats.isolated_egress,
        stats.policies,
        elements
    );
    println!("index build: {:.1} ms", ms(index_time));
    println!("full compile: median {full_ms:.2} ms over 7 runs");
    println!(
        "pod label change: median {label_ms:.3} ms, p99 {:.3} ms over {} changes",
        ms(p99(label_changes)),
        200
    );
    println!(
        "policy change: median {policy_ms:.3} ms, p99 {:.3} ms over {} changes",
        ms(p99(policy_changes)),
        200
    );
    println!(
        "peak RSS: {total_peak_mib:.1} MiB (state and compile: {peak_mib:.1} MiB above start)"
    );
    println!(
        "flow log line resolution: median {:.1} us, p99 {:.1} us over {} packets",
        ms(median(flow_lines.clone())) * 1e3,
        ms(p99(flow_lines)) * 1e3,
        remote.len()
    );
    println!("incremental plan equals a full compile: {consistent}");
    for (name, (value, target)) in by_target {
        println!("ratio to target: {name}: {:.3}", value / target);
    }
}
