//! Per-packet cost (`cargo bench --bench packets`, root): new TCP connections per second from a
//! client pod to a server pod on a bridged testbed node, when the server is selected by 0, 10,
//! 100 and 1,000 policies, as a ratio to the same topology without any ruleset. In the same run
//! the same policies are written as a linear iptables layout with ipset matches (one chain per
//! policy, one rule per peer, the way kube-router does it) to show the difference.
//!
//! Only the first packet of a connection meets the policy (replies and the rest of the flow
//! are `ct state established`), so connection setup rate is where the per-rule cost shows.
//! Prints medians and ratios; asserts nothing about time.

mod connrate;

use std::fmt::Write as _;

use anyhow::Context as _;
use nftpol_testbed::{Mode, Testbed};
use serde_json::{Value, json};

use connrate::{CLIENT_IP, PORT, REPEATS, RUN, SERVER_IP, cluster, median, rate, serve};

/// The CIDR policy `i` allows (none of them holds the client).
fn cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", 100 + i / 250, i % 250)
}

/// `n` policies selecting the server; the last one is the one that allows the client.
fn policies(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let from = if i + 1 == n {
                json!([{"podSelector": {"matchLabels": {"app": "client"}}}])
            } else {
                json!([{"ipBlock": {"cidr": cidr(i)}},
                       {"podSelector": {"matchLabels": {"app": format!("nobody-{i}")}}}])
            };
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("p{i}"), "namespace": "bench"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                         "ingress": [{"from": from, "ports": [{"port": PORT}]}]}
            })
        })
        .collect()
}

/// The same policies as kube-router lays them out: a chain per pod, a chain per policy, a rule
/// per peer matching an ipset; every policy is walked in order until one accepts.
fn iptables_layout(n: usize) -> (String, String) {
    let mut sets = String::new();
    let mut rules = String::from("*filter\n:FORWARD ACCEPT [0:0]\n:NP-POD-SERVER - [0:0]\n");
    for i in 0..n {
        let _ = writeln!(rules, ":NP-{i} - [0:0]");
    }
    rules.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    let _ = writeln!(rules, "-A FORWARD -d {SERVER_IP}/32 -j NP-POD-SERVER");
    for i in 0..n {
        let members = if i + 1 == n {
            format!("add np-{i} {CLIENT_IP}/32\n")
        } else {
            format!("add np-{i} {}\n", cidr(i))
        };
        let _ = write!(sets, "create np-{i} hash:net\n{members}");
        let _ = writeln!(rules, "-A NP-POD-SERVER -j NP-{i}");
        let _ = writeln!(
            rules,
            "-A NP-{i} -p tcp --dport {PORT} -m set --match-set np-{i} src -j ACCEPT"
        );
    }
    if n > 0 {
        rules.push_str("-A NP-POD-SERVER -j DROP\n");
    }
    rules.push_str("COMMIT\n");
    (sets, rules)
}

fn testbed(state: &nftpol::policy::model::ClusterState) -> anyhow::Result<Testbed> {
    let bed = Testbed::new(Mode::Bridge, state)?;
    serve(&bed)?;
    Ok(bed)
}

fn load_iptables(bed: &Testbed, n: usize) -> anyhow::Result<()> {
    bed.node().exec("iptables", &["-F"], None)?;
    bed.node().exec("iptables", &["-X"], None)?;
    bed.node().exec("ipset", &["destroy"], None)?;
    let (sets, rules) = iptables_layout(n);
    bed.node().exec("ipset", &["restore"], Some(&sets))?;
    bed.node().exec("iptables-restore", &[], Some(&rules))?;
    Ok(())
}

/// The comparison layout needs iptables-restore and ipset, which nftpol itself never uses: a
/// fresh machine lacks them, so the benchmark installs them (Debian packages, through
/// hack/deps.sh like the rest of the project's tools) rather than stopping half-way.
fn bench_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["iptables-restore", "ipset"]
        .into_iter()
        .filter(|tool| {
            std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "{} missing: installing them with hack/deps.sh --bench-tools",
        missing.join(", ")
    );
    let deps = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/deps.sh");
    let status = std::process::Command::new("bash")
        .args([deps, "--bench-tools"])
        .status()
        .with_context(|| format!("running {deps}"))?;
    anyhow::ensure!(
        status.success(),
        "{deps} --bench-tools failed ({status}): the comparison layout needs iptables and ipset"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !nftpol_testbed::netns::available() {
        println!("skipping: the packet benchmark needs root (network namespaces)");
        return Ok(());
    }
    bench_tools()?;
    let loaded = nftpol::source::manifest::load_values("bench", cluster())?;
    // Three identical nodes side by side: no ruleset, nftpol, and the iptables layout. Each
    // round measures all three back to back, so that load from elsewhere hits them alike.
    let plain = testbed(&loaded.state)?;
    let mut nft = testbed(&loaded.state)?;
    let ipt = testbed(&loaded.state)?;
    let counts = [0usize, 10, 100, 1000];
    println!(
        "new TCP connections/s, client -> server on one bridged node; median of {REPEATS} interleaved rounds of {RUN:?}"
    );
    println!("policies | no ruleset | nftpol (ratio) | iptables+ipset (ratio)");
    let mut last = (0.0, 0.0);
    for &n in &counts {
        let mut objects = cluster();
        objects.extend(policies(n));
        nft.apply_objects(&objects)?;
        load_iptables(&ipt, n)?;
        let (mut p, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            p.push(rate(&plain));
            a.push(rate(&nft));
            b.push(rate(&ipt));
        }
        // Ratios per round, then the median: robust to a round disturbed from outside.
        let ra = median(a.iter().zip(&p).map(|(x, y)| x / y).collect());
        let rb = median(b.iter().zip(&p).map(|(x, y)| x / y).collect());
        println!(
            "{n:>8} | {:>10.0} | {:>8.0} ({ra:.3}) | {:>8.0} ({rb:.3})",
            median(p),
            median(a),
            median(b)
        );
        last = (ra, rb);
    }
    println!(
        "at 1000 policies: nftpol keeps {:.3} of the no-ruleset rate (target >= 0.9); the linear iptables layout keeps {:.3}",
        last.0, last.1
    );
    Ok(())
}
