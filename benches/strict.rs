//! `--strict` sweep benchmark (`cargo bench --bench strict`, as root): a throw-away network
//! namespace whose conntrack table is filled with 100,000 established TCP entries (created
//! over ctnetlink, batched) to 100 local pods, each isolated for ingress with TCP 80
//! allowed from anywhere. Half the entries are to port 80 (allowed), half to port 81 (denied).
//! Prints: filling the table, a sweep that cuts nothing (dump and judge 100,000 entries), a
//! sweep that cuts the 50,000 denied ones (batched deletes), the same within the daemon's
//! budget (how many rounds), and one-message-per-entry deletes for comparison. It asserts no
//! times.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use nftpol::dataplane::conntrack::{Conntrack, Entry, Tuple};
use nftpol::engine::strict::{SWEEP_BUDGET, sweep};
use nftpol::policy::compile::{Endpoint, Isolation, NodePlan, RuleAllow};
use nftpol::policy::intervals::{AddrSet, AllowedBuilder};
use nftpol::policy::model::{ObjectKey, Protocol};

const ENTRIES: u32 = 100_000;
const PODS: u32 = 100;
/// Seconds the created entries live: longer than the benchmark.
const TIMEOUT: u32 = 600;

fn pod_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i + 1) as u8))
}

/// 100 pods taking TCP 80 from anywhere, nothing else.
fn plan() -> NodePlan {
    let any: ipnet::IpNet = "0.0.0.0/0".parse().expect("net");
    let mut b = AllowedBuilder::default();
    b.add_ports(Protocol::Tcp, 80, 80, AddrSet::from_nets([&any]));
    let allowed = b.finish();
    let policy = ObjectKey::new("bench", "web");
    let endpoints: BTreeMap<ObjectKey, Endpoint> = (0..PODS)
        .map(|i| {
            let key = ObjectKey::new("bench", format!("pod-{i}"));
            let iso = Isolation {
                policies: vec![policy.clone()],
                rules: vec![RuleAllow {
                    policy: policy.clone(),
                    rule: 0,
                    allowed: allowed.clone(),
                }],
                allowed: allowed.clone(),
                log_allowed: false,
            };
            let e = Endpoint {
                pod: key.clone(),
                ips: vec![pod_ip(i)],
                ingress: Some(std::sync::Arc::new(iso)),
                egress: None,
                audit: false,
                cluster_ingress: Default::default(),
                cluster_egress: Default::default(),
            };
            (key, e)
        })
        .collect();
    NodePlan {
        endpoints,
        skipped: BTreeMap::new(),
    }
}

/// Entry `i`: from a distinct remote address to pod `i % 100`, port 80 for even `i`, 81 for odd.
fn entry(i: u32) -> Entry {
    let src = IpAddr::V4(Ipv4Addr::new(
        10,
        1 + (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ));
    Entry {
        orig: Tuple {
            src,
            dst: pod_ip(i % PODS),
            proto: 6,
            sport: 40000,
            dport: if i.is_multiple_of(2) { 80 } else { 81 },
        },
        reply: None,
        zone: None,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    nftpol_testbed::netns::require(&[]);
    let plan = plan();
    let entries: Vec<Entry> = (0..ENTRIES).map(entry).collect();
    let ns = support::Netns::new();
    let lines = ns.run(move || {
        let mut lines = Vec::new();
        let mut ct = Conntrack::open().expect("ctnetlink");
        let none = HashSet::new();

        let t = Instant::now();
        ct.create_many(&entries, TIMEOUT).expect("create");
        let created = t.elapsed();
        let n = ct.dump().expect("dump").len();
        lines.push(format!(
            "fill: {n} entries created in {} ({} per sendmsg)",
            ms(created),
            nftpol::dataplane::conntrack::BATCH
        ));

        // A plan that denies nothing of it: dump and judge only.
        let mut open = plan.clone();
        for e in open.endpoints.values_mut() {
            e.ingress = None;
        }
        let (s, _) = sweep(&mut ct, &open, &none, Duration::MAX).expect("sweep");
        lines.push(format!(
            "sweep, nothing denied: {} ({} entries examined, {} cut)",
            ms(s.took),
            s.examined,
            s.cut
        ));

        let (s, _) = sweep(&mut ct, &plan, &none, Duration::MAX).expect("sweep");
        lines.push(format!(
            "sweep, half denied, unbounded: {} ({} examined, {} cut, {:.0} cut/s)",
            ms(s.took),
            s.examined,
            s.cut,
            s.cut as f64 / s.took.as_secs_f64()
        ));

        // Again within the daemon's budget: rounds until complete.
        ct.create_many(
            &entries
                .iter()
                .copied()
                .filter(|e| e.orig.dport == 81)
                .collect::<Vec<_>>(),
            TIMEOUT,
        )
        .expect("refill");
        let (s, mut left) = sweep(&mut ct, &plan, &none, SWEEP_BUDGET).expect("sweep");
        let mut rounds = vec![(s.took, s.cut)];
        let mut complete = s.complete;
        while !complete {
            let s = left.go_on(&mut ct, SWEEP_BUDGET).expect("go on");
            rounds.push((s.took, s.cut));
            complete = s.complete;
        }
        lines.push(format!(
            "sweep, half denied, {} budget: {} round(s): {}",
            ms(SWEEP_BUDGET),
            rounds.len(),
            rounds
                .iter()
                .map(|(t, c)| format!("{} cut in {}", c, ms(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        ));

        // What the sweep did before: one acknowledged message per entry (10,000 of them).
        let some: Vec<Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.orig.dport == 81)
            .take(10_000)
            .collect();
        ct.create_many(&some, TIMEOUT).expect("refill");
        let t = Instant::now();
        for e in &some {
            ct.delete(e).expect("delete");
        }
        let one = t.elapsed();
        ct.create_many(&some, TIMEOUT).expect("refill");
        let t = Instant::now();
        let cut = ct.delete_many(&some).expect("delete");
        let batched = t.elapsed();
        lines.push(format!(
            "10,000 deletes: one per message {}, batched {} ({cut} deleted)",
            ms(one),
            ms(batched)
        ));
        // Leave nothing behind (the namespace goes too).
        let rest = ct.dump().expect("dump");
        ct.delete_many(&rest).expect("cleanup");
        lines
    });
    for l in lines {
        println!("{l}");
    }
}
