//! ClusterNetworkPolicy per-packet cost (`cargo bench --bench cnp`, root): new TCP connections
//! per second from a client pod to a server pod on a bridged testbed node, when both are
//! selected by 0, 10 and 100 Admin ClusterNetworkPolicies of 25 ingress and 25 egress rules
//! each (none of which matches the connection, so every rule is considered) plus a
//! NetworkPolicy that allows the client, as a ratio to the same topology without any ruleset.
//! The ingress rules name pods that do not exist; the egress rules name `networks` of their
//! own, so the client's egress decision map holds an element per rule (2,500 at 100).
//!
//! Only the first packet of a connection meets the policies, so connection setup rate is where
//! the per-rule cost shows. Prints medians and ratios; asserts nothing about time.

mod connrate;

use nftpol_testbed::{Mode, Testbed};
use serde_json::{Value, json};

use connrate::{PORT, RUN, cluster, median, rate, serve};

/// More rounds than `packets`: the differences measured here are small, the machines noisy.
const REPEATS: usize = 9;

const RULES: usize = 25;

/// A NetworkPolicy allowing the client into the server on PORT, and `n` Admin
/// ClusterNetworkPolicies selecting both pods, each with 25 ingress rules that match nobody
/// the client is (pods that do not exist) and 25 egress rules to a /32 network each that is
/// not the server, half of them with protocols, actions mixed.
fn policies(n: usize) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client", "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": PORT}]}]}
    })];
    for i in 0..n {
        let rules: Vec<Value> = (0..RULES)
            .map(|j| {
                let action = ["Deny", "Accept", "Pass"][j % 3];
                let peer = json!({"pods": {"namespaceSelector": {},
                                           "podSelector": {"matchLabels": {"app": format!("nobody-{i}-{j}")}}}});
                if j % 2 == 0 {
                    json!({"action": action, "from": [peer],
                           "protocols": [{"tcp": {"destinationPort": {"number": PORT}}},
                                         {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}}]})
                } else {
                    json!({"action": action, "from": [peer]})
                }
            })
            .collect();
        let egress: Vec<Value> = (0..RULES)
            .map(|j| {
                let action = ["Deny", "Accept", "Pass"][j % 3];
                let peer = json!({"networks": [format!("172.16.{}.{j}/32", i % 256)]});
                if j % 2 == 0 {
                    json!({"action": action, "to": [peer],
                           "protocols": [{"tcp": {"destinationPort": {"number": PORT}}}]})
                } else {
                    json!({"action": action, "to": [peer]})
                }
            })
            .collect();
        out.push(json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": format!("cnp-{i:03}")},
            "spec": {"tier": "Admin", "priority": i % 1000,
                     "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                         {"key": "app", "operator": "In", "values": ["client", "server"]}]}}},
                     "ingress": rules, "egress": egress}
        }));
    }
    out
}

fn testbed(state: &nftpol::policy::model::ClusterState) -> anyhow::Result<Testbed> {
    let bed = Testbed::new(Mode::Bridge, state)?;
    serve(&bed)?;
    Ok(bed)
}

fn main() -> anyhow::Result<()> {
    if !nftpol_testbed::netns::available() {
        println!("skipping: the ClusterNetworkPolicy benchmark needs root (network namespaces)");
        return Ok(());
    }
    let loaded = nftpol::source::manifest::load_values("bench", cluster())?;
    // Two identical nodes side by side, measured back to back in each round.
    let plain = testbed(&loaded.state)?;
    let mut nft = testbed(&loaded.state)?;
    println!(
        "new TCP connections/s, client -> server on one bridged node (server selected by a NetworkPolicy; both pods by N Admin ClusterNetworkPolicies of {RULES} ingress and {RULES} egress rules, none matching); median of {REPEATS} interleaved rounds of {RUN:?}"
    );
    println!("CNPs | rules per direction | no ruleset | nftpol (ratio)");
    let mut last = 0.0;
    for n in [0usize, 10, 100] {
        let mut objects = cluster();
        objects.extend(policies(n));
        nft.apply_objects(&objects)?;
        let (mut p, mut a) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            p.push(rate(&plain));
            a.push(rate(&nft));
        }
        let ra = median(a.iter().zip(&p).map(|(x, y)| x / y).collect());
        println!(
            "{n:>4} | {:>19} | {:>10.0} | {:>8.0} ({ra:.3})",
            n * RULES,
            median(p),
            median(a)
        );
        last = ra;
    }
    println!(
        "at 100 ClusterNetworkPolicies: nftpol keeps {last:.3} of the no-ruleset rate (target >= 0.9)"
    );
    Ok(())
}
