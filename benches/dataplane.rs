//! Dataplane benchmark (`cargo bench --bench dataplane`, as root): a synthetic 10,000-pod,
//! 500-namespace, 2,000-policy cluster compiled for one node with 100 local pods, programmed
//! into a throw-away network namespace. Prints the initial load, an atomic replace, one element
//! add and one element delete (medians), a one-pod cluster change end to end, a drift check, and
//! the counter read behind each `/metrics` scrape (`nftpol_dropped_packets`). It asserts no
//! times.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use nftpol::dataplane::ruleset::{AddrRange, Element, SetKind};
use nftpol::dataplane::{Dataplane, Options, Ruleset};
use nftpol::policy::compile::{Scope, compile};
use nftpol::policy::index::ClusterIndex;
use nftpol::policy::model::{ObjectKey, Protocol};

use common::{APPS, cluster, pod};

const REPEATS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The research prototype's workload: 500 isolated pods with 10 port tuples each.
fn synthetic_500x10() -> Ruleset {
    use nftpol::policy::compile::{Endpoint, Isolation, NodePlan};
    use nftpol::policy::intervals::{AddrSet, AllowedBuilder};
    let mut plan = NodePlan::default();
    for i in 0..500u32 {
        let mut b = AllowedBuilder::default();
        for j in 0..10u32 {
            let net: ipnet::IpNet = format!("10.{}.{}.0/24", (i * 7 + j) % 250, j)
                .parse()
                .expect("net");
            let lo = 1000 + (j * 10) as u16;
            b.add_ports(
                Protocol::Tcp,
                lo,
                lo + (j % 5) as u16,
                AddrSet::from_nets([&net]),
            );
        }
        let key = ObjectKey::new("bulk", format!("pod-{i}"));
        plan.endpoints.insert(
            key.clone(),
            Endpoint {
                pod: key,
                ips: vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    250,
                    (i / 250) as u8,
                    (i % 250) as u8 + 1,
                ))],
                ingress: Some(std::sync::Arc::new(Isolation {
                    policies: vec![],
                    rules: vec![],
                    allowed: b.finish(),
                    log_allowed: false,
                })),
                egress: None,
                audit: false,
                cluster_ingress: Default::default(),
                cluster_egress: Default::default(),
            },
        );
    }
    Ruleset::build(&plan, Options::default())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let state = cluster();
    let t0 = Instant::now();
    let index = ClusterIndex::from_state(&state);
    let plan = compile(&index, &Scope::Node("node-0".into()));
    let compile_time = t0.elapsed();
    let t1 = Instant::now();
    let rs = Ruleset::build(&plan, Options::default());
    let model_time = t1.elapsed();
    println!(
        "cluster: {} pods, {} policies; node-0: {} endpoints, {} pod chains, {} set/map elements",
        state.pods.len(),
        state.policies.len(),
        plan.endpoints.len(),
        rs.pods.len(),
        rs.element_count()
    );
    println!(
        "compile {}  ruleset model {}",
        ms(compile_time),
        ms(model_time)
    );

    // One more pod on another node that becomes a peer of local pods: in namespace ns-N the
    // same-app policy lets app-(N+1) pods in, so add such a pod to the namespace of a local
    // ingress-isolated endpoint.
    let mut state2 = state.clone();
    let host_ns = plan
        .endpoints
        .values()
        .find(|e| e.ingress.is_some())
        .and_then(|e| {
            e.pod
                .namespace
                .trim_start_matches("ns-")
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let mut extra = pod(host_ns, 100 + (host_ns + 1) % APPS);
    extra.key.name = "pod-extra".into();
    extra.node = Some("node-1".into());
    extra.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))];
    state2.pods.push(extra);

    let ns = support::Netns::new();
    let out = ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        let mut lines: BTreeMap<&str, String> = BTreeMap::new();
        let first = dp.apply_full(&rs).expect("initial load");
        lines.insert(
            "1 initial load",
            format!(
                "{} (build {}), {} messages, {} KiB, one transaction",
                ms(first.kernel),
                ms(first.build),
                first.messages,
                first.bytes / 1024
            ),
        );
        let replace: Vec<Duration> = (0..REPEATS)
            .map(|_| dp.apply_full(&rs).expect("replace").kernel)
            .collect();
        lines.insert("2 atomic replace (median)", ms(median(replace)));

        let mut with = rs.clone();
        let set = with
            .shared_sets
            .values_mut()
            .chain(with.pods.values_mut().flat_map(|p| p.sets.iter_mut()))
            .find(|s| s.kind == SetKind::AddrProtoPort)
            .expect("a port set");
        set.elements.push(Element::Tuple {
            addrs: AddrRange {
                lo: "172.16.0.1".parse().expect("ip"),
                hi: "172.16.0.1".parse().expect("ip"),
            },
            protocol: Protocol::Udp,
            ports: (5353, 5353),
        });
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS * 3 {
            adds.push(dp.apply_diff(&rs, &with).expect("add").kernel);
            dels.push(dp.apply_diff(&with, &rs).expect("del").kernel);
        }
        lines.insert("3 one element add (median)", ms(median(adds)));
        lines.insert("4 one element delete (median)", ms(median(dels)));

        let t = Instant::now();
        let index2 = ClusterIndex::from_state(&state2);
        let plan2 = compile(&index2, &Scope::Node("node-0".into()));
        let rs2 = Ruleset::build(&plan2, Options::default());
        let recompiled = t.elapsed();
        let r = dp.apply_diff(&rs, &rs2).expect("pod change");
        lines.insert(
            "5 one remote pod added",
            format!(
                "recompile {} + apply {} ({} messages)",
                ms(recompiled),
                ms(r.kernel),
                r.messages
            ),
        );
        let t = Instant::now();
        let drift = dp.check_drift().expect("drift check");
        lines.insert(
            "6 drift check (full read-back)",
            format!(
                "{} ({})",
                ms(t.elapsed()),
                if drift.is_none() { "clean" } else { "DRIFT" }
            ),
        );
        let reader = nftpol::dataplane::CounterReader::new().expect("counter reader");
        let mut reads = Vec::new();
        let mut counters = 0;
        for _ in 0..9 {
            let t = Instant::now();
            counters = reader.drop_counters().expect("counters").len();
            reads.push(t.elapsed());
        }
        lines.insert(
            "7 drop counters read per /metrics scrape",
            format!("{} median ({counters} chain counters)", ms(median(reads))),
        );
        lines
    });
    for (k, v) in out {
        println!("{k}: {v}");
    }

    let big = synthetic_500x10();
    let ns = support::Netns::new();
    let (load, replace) = ns.run(move || {
        let mut dp = Dataplane::new().expect("dataplane");
        let loads: Vec<_> = (0..REPEATS)
            .map(|_| {
                dp.delete_table().expect("delete");
                dp.apply_full(&big).expect("load")
            })
            .collect();
        let replace: Vec<Duration> = (0..REPEATS)
            .map(|_| dp.apply_full(&big).expect("replace").kernel)
            .collect();
        let msgs = loads[0].messages;
        (
            (median(loads.iter().map(|r| r.kernel).collect()), msgs),
            median(replace),
        )
    });
    println!(
        "500 pods x 10 tuples (5,000 pipapo elements, 1,000 sets, 500 chains, 500-entry vmap): \
         load {} ({} messages), atomic replace {} (medians)",
        ms(load.0),
        load.1,
        ms(replace)
    );
}
