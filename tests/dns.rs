//! `domainNames` on the real kernel, each case in its own network namespace (run as root): the
//! ruleset with learned-address sets and the DNS hold lists as rendered and checks clean, and
//! learned elements survive reconciles and are no drift.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use nftpol::dataplane::dns::{LearnSocket, Learned, learned_set_name};
use nftpol::dataplane::{Dataplane, Options, Ruleset, render};
use nftpol::policy::compile::{NodePlan, Scope, compile};
use nftpol::policy::index::ClusterIndex;
use serde_json::{Value, json};
use support::{Netns, normalize};

fn plan(extra_pods: &[(&str, &str)]) -> NodePlan {
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
    let pod = |n: &str, name: &str, ips: &[&str]| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": n, "labels": {"app": name}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
               "status": {"phase": "Running", "podIP": ips[0],
                          "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
    };
    let sel = |n: &str| json!({"matchLabels": {"kubernetes.io/metadata.name": n}});
    let mut docs: Vec<Value> = vec![
        ns("shop"),
        pod("shop", "web", &["10.1.0.5", "fd00::5"]),
        json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
               "metadata": {"name": "egress"},
               "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": sel("shop")},
                        "egress": [
                            {"name": "apis", "action": "Accept",
                             "to": [{"domainNames": ["api.example.com", "*.cdn.example"]}],
                             "protocols": [{"tcp": {"destinationPort": {"number": 443}}},
                                           {"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8080}}}}]},
                            {"name": "any", "action": "Accept", "to": [{"domainNames": ["any.example"]}]},
                            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]}}),
    ];
    for (name, ip) in extra_pods {
        docs.push(pod("shop", name, &[ip]));
    }
    let loaded = nftpol::source::manifest::load_values("dns", docs).expect("loads");
    assert!(loaded.invalid.is_empty(), "{:?}", loaded.invalid);
    compile(
        &ClusterIndex::from_state(&loaded.state),
        &Scope::Node("n1".into()),
    )
}

fn options() -> Options {
    Options {
        dns_queue: Some(7153),
        ..Options::default()
    }
}

#[test]
fn domain_rules_list_as_rendered_and_learned_elements_are_no_drift() {
    nftpol_testbed::netns::require(&["nft"]);
    let rs = Ruleset::build(&plan(&[]), options());
    let rendered = render(&rs);
    for line in [
        "ip daddr @dnspods_v4 udp sport 53 queue num 7153 bypass",
        "ip6 daddr @dnspods_v6 tcp sport 53 queue num 7153 bypass",
        "ip daddr @d4/c/egress/e0 tcp dport 443 return",
        "ip daddr @d4/c/egress/e0 tcp dport 8000-8080 return",
        "ip6 daddr @d6/c/egress/e1 return",
        "flags timeout",
    ] {
        assert!(rendered.contains(line), "{line} not in\n{rendered}");
    }
    let ns = Netns::new();
    let rs2 = rs.clone();
    let next = Ruleset::build(&plan(&[("api", "10.1.0.9")]), options());
    let next2 = next.clone();
    let listed = ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.apply_full(&rs2).expect("apply_full");
        assert_eq!(dp.check_drift().unwrap(), None);
        let learn = LearnSocket::open().unwrap();
        let set = learned_set_name("c/egress/e0", nftpol::dataplane::ruleset::Family::V4);
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let l = Learned {
            set: set.clone(),
            addr,
            timeout: Duration::from_secs(300),
        };
        learn.learn(std::slice::from_ref(&l)).expect("learn");
        // Again: the timeout is renewed, no EEXIST.
        learn.learn(&[l]).expect("learn again");
        assert_eq!(
            dp.check_drift().unwrap(),
            None,
            "learned elements are no drift"
        );
        // A reconcile (a new subject pod) keeps what was learned.
        let report = dp.apply(&next2).expect("diff");
        assert_eq!(report.kind, nftpol::dataplane::ApplyKind::Diff);
        assert_eq!(dp.check_drift().unwrap(), None);
        dp.last_applied().cloned()
    });
    assert_eq!(listed.as_ref(), Some(&next));
    let text = ns.exec(&["nft", "list", "set", "inet", "nftpol", "d4/c/egress/e0"]);
    assert!(text.contains("192.0.2.1 timeout 5m"), "{text}");
    // With the learned element left out, the kernel lists what render says.
    let listing = ns.list_table();
    let without: String = listing
        .lines()
        .filter(|l| !l.contains("192.0.2.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(normalize(&without), normalize(&render(&next)));
}
